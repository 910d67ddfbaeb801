"""`lntune serve`: an OpenAI-compatible server for a base model and its adapters, mixed in one batch.

settings.py     ServeSettings: limits and knobs, validated once
rows.py         RowSelection: which adapter each sequence / image of a forward pass uses
norm_bank.py    BankedNorm: a norm with a bank of adapter weights, gathered per sequence
grouped.py      GroupedModule: connector / embeddings / head / other modules, rows grouped per adapter
adapters.py     AdapterSet: the base + loaded adapters on one model copy; load, unload, fingerprint check
sampling.py     greedy (temperature 0) or temperature / top_p sampling per sequence
text.py         TextAssembler: tokens -> streamed text, stop strings
decoding.py     Decoder: a batch of sequences -> tokens with a KV cache, one forward per step
joining.py      newcomers' KV cache appended to a running batch's (continuous batching)
batcher.py      Batcher: dynamic batching (wait window, max batch, joining, bounded queue, graceful stop)
images.py       base64 data: URLs -> RGB images, bounded in bytes and pixels (nothing is fetched)
openai_schema.py  the request bodies (pydantic), as OpenAI defines them
chat_request.py RequestBuilder: a chat request -> a Sequence through lntune eval's prompt builder
errors.py       ServeError: HTTP status + OpenAI-style error body
service.py      ChatService: model, adapters, request builder and batcher behind the routes
limits.py       BodyLimit: request body size guard (ASGI)
page.py         the chat page (static/chat.html, no external assets)
app.py          the FastAPI routes
server.py       uvicorn in the foreground (the command) or in a thread (tests, benchmarks)
cli.py          `lntune serve` arguments and command
"""
