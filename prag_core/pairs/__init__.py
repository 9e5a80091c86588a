"""A document's LoRA pairs: their tensors and file format (doc_params.py), how a question's documents combine
into one update (combine.py), the names a user picks among (choices.py: B inits, combination schemes;
torch-free), and export as a PEFT adapter folder (peft_export.py).

Imports model/ below it; nothing above.
"""
