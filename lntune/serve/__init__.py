"""`lntune serve`: an OpenAI-compatible server for a base model and its adapters, mixed in one batch.

settings.py     ServeSettings: limits and knobs, validated once
rows.py         RowSelection: which adapter each sequence / image of a forward pass uses
norm_bank.py    BankedNorm: a norm with a bank of adapter weights, gathered per sequence
grouped.py      GroupedModule: connector / embeddings / head / other modules, rows grouped per adapter
adapters.py     AdapterSet: the base + loaded adapters on one model copy; load, unload, fingerprint check
sampling.py     greedy (temperature 0) or temperature / top_p sampling per sequence
text.py         TextAssembler: tokens -> streamed text, stop strings
decoding.py     Decoder: a batch of sequences -> tokens with a KV cache, one forward per step
"""
