"""The offline step, corpus -> stored pairs: passages, augmentation (augment.py), training sequences
(samples.py), the training loop (train.py) and its config (train_config.py, torch-free), the warm-up pair
(warmup.py), and `prag build` (build.py) with its Ray executor (distributed.py).

Imports model/, pairs/, retrieval/ and storage/ below it; nothing above.
"""
