"""A document's LoRA pairs: their tensors and file format (doc_params.py), how a question's documents combine
into one update (combine.py), and export as a PEFT adapter folder (peft_export.py).

Imports model/ below it; nothing above.
"""
