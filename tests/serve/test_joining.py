"""Continuous batching: sequences that arrive while a batch decodes join it at its next step, and every sequence
still generates exactly what it generates served alone (greedy and seeded sampling, mixed adapters, images)."""

import threading
import time

from openai import OpenAI

from lntune.data.images import pixel_values
from lntune.eval.generate import GenerationPrompts
from lntune.model.load import load_model, load_processor
from lntune.serve.adapters import AdapterSet
from lntune.serve.decoding import Decoder, Sequence, Sink
from lntune.serve.sampling import SamplingParams
from lntune.serve.server import serving_in_thread
from lntune.serve.service import ChatService
from lntune.serve.settings import ServeSettings
from tests.helpers import make_image
from tests.serve.helpers import data_url

QUESTIONS = ["what color is the square?", "describe the image in many words, every detail of it please.",
             "is there a cat?", "how many objects are there?"]


class Collect(Sink):
    def __init__(self):
        self.finish = self.error = None

    def on_finish(self, reason, prompt_tokens, completion_tokens, text):
        self.finish = (reason, completion_tokens, text)

    def on_error(self, error):
        self.error = error


def _decoder(model_dir, adapter_dirs):
    model = load_model(model_dir).eval()
    adapters = AdapterSet(model, model_dir)
    for name in ("simple-a", "ln", "qv"):
        adapters.load(name, adapter_dirs[name])
    processor = load_processor(model_dir)
    return Decoder(model, processor.tokenizer, adapters), processor


def _sequences(decoder, processor, specs):
    """specs: (model name, question index, image seed or None, max tokens, temperature) -> fresh Sequences."""
    prompts = GenerationPrompts(processor, decoder.model.config.image_seq_length)
    made = []
    for name, question, image_seed, max_tokens, temperature in specs:
        name = decoder.adapters.base.name if name == "base" else name
        pixels = None if image_seed is None else pixel_values(processor, make_image(image_seed), "pad")[None]
        sampling = SamplingParams(temperature=temperature, seed=11 if temperature else None)
        made.append(Sequence(prompts.ids(QUESTIONS[question], pixels is not None), pixels, name, max_tokens, sampling,
                             sink=Collect()))
    return made


# running from the start; then joiners at given steps: longer and shorter prompts than the running ones, other
# adapters, with and without images, one sampled with a seed, one that ends at its first token
START = [("ln", 0, 0, 14, 0.0), ("simple-a", 2, None, 14, 0.0)]
JOINING = {2: [("qv", 1, 1, 10, 0.0), ("base", 3, None, 8, 0.0)],
           5: [("simple-a", 1, 2, 9, 1.3), ("ln", 3, 3, 1, 0.0)],
           6: [("qv", 0, None, 6, 0.0)]}


def test_sequences_joining_a_running_batch_generate_what_they_generate_alone(serve_model, adapter_dirs):
    model_dir = serve_model
    decoder, processor = _decoder(model_dir, adapter_dirs)
    specs = START + [spec for step in sorted(JOINING) for spec in JOINING[step]]
    alone = []
    for sequence in _sequences(decoder, processor, specs):
        decoder.run([sequence])
        alone.append(list(sequence.generated))
    assert len({tuple(tokens) for tokens in alone}) > 3  # the sequences do differ

    asked = []
    joiners = {step: _sequences(decoder, processor, JOINING[step]) for step in JOINING}
    pending = dict(joiners)

    def more(active):  # the decoder asks between steps; call n hands over the joiners of step n
        asked.append(active)
        return pending.pop(len(asked), [])

    start = _sequences(decoder, processor, START)
    stats = decoder.run(start, more)
    assert not pending  # every joiner was taken
    everyone = start + [sequence for step in sorted(joiners) for sequence in joiners[step]]
    assert stats.sequences == len(specs) and all(sequence.sink.error is None for sequence in everyone)
    assert [sequence.generated for sequence in everyone] == alone
    assert stats.steps <= 14  # one batch: the joiners rode along in the running batch's steps
    assert asked[:3] == [2, 2, 4]  # room is asked for at every step, beside the sequences running


def test_an_adapter_change_waiting_stops_joins_so_it_gets_its_turn(serve_model, adapter_dirs):
    """Under steady arrivals a batch could run for ever and starve load / unload (they wait for the model lock):
    once a change waits, nothing more joins, the batch ends, and the change happens."""
    decoder, processor = _decoder(serve_model, adapter_dirs)
    asked, unloaded = [], threading.Event()

    def unload():
        decoder.adapters.unload("qv")
        unloaded.set()

    def more(active):
        asked.append(active)
        if len(asked) == 1:
            threading.Thread(target=unload).start()
            deadline = time.monotonic() + 30
            while not decoder.adapters.changes_waiting and time.monotonic() < deadline:
                time.sleep(0.001)
        if len(asked) > 30:
            return []  # bounded, so that a decoder ignoring the waiting change fails here instead of running on
        joiners.extend(_sequences(decoder, processor, [("simple-a", 0, None, 12, 0.0)]))  # always someone waiting
        return joiners[-1:]

    joiners = []
    start = _sequences(decoder, processor, [("ln", 1, 0, 12, 0.0)])
    stats = decoder.run(start, more)
    assert len(asked) == 1  # the change began to wait during the first ask: never asked again
    assert stats.sequences == 2 and joiners[0].sink.finish is not None  # the one taken then still joined
    assert unloaded.wait(30) and "qv" not in decoder.adapters.adapters


def test_a_model_with_sliding_window_layers_is_not_joined(built_model, tmp_path):
    """Gemma2's sliding-window cache keeps only its window per batch: its waiting sequences start the next batch."""
    model_dir = built_model(llm="gemma2")
    model = load_model(model_dir).eval()
    processor = load_processor(model_dir)
    decoder = Decoder(model, processor.tokenizer, AdapterSet(model, model_dir))
    asked = []
    sequences = _sequences(decoder, processor, [("base", 0, 0, 5, 0.0)])
    decoder.run(sequences, lambda active: asked.append(active) or [])
    assert asked == [] and sequences[0].sink.finish is not None


def test_a_request_arriving_mid_batch_finishes_before_the_long_one(serve_model, adapter_dirs):
    """Over HTTP: a short request sent while a long one streams is answered long before the long one ends (it
    joined), and both answers equal what each gets alone."""
    service = ChatService(serve_model, ServeSettings(max_batch=8, batch_wait_ms=0),
                          adapters={name: adapter_dirs[name] for name in ("simple-a", "ln")}, say=lambda m: None)

    def message(seed, question):
        return [{"role": "user", "content": [{"type": "text", "text": question},
                                             {"type": "image_url", "image_url": {"url": data_url(make_image(seed))}}]}]

    long_request = {"model": "ln", "messages": message(0, QUESTIONS[1]), "max_tokens": 60, "temperature": 0}
    short_request = {"model": "simple-a", "messages": message(1, QUESTIONS[0]), "max_tokens": 3, "temperature": 0}
    with serving_in_thread(service) as (url, _), \
            OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        long_alone = client.chat.completions.create(**long_request)
        short_alone = client.chat.completions.create(**short_request).choices[0].message.content
        assert long_alone.usage.completion_tokens == 60, "the long answer must not end early for this test"
        finished = {}
        pieces = []

        def stream_long():
            for chunk in client.chat.completions.create(**long_request, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
            finished["long"] = time.monotonic()

        thread = threading.Thread(target=stream_long)
        thread.start()
        deadline = time.monotonic() + 60
        while not pieces and time.monotonic() < deadline:
            time.sleep(0.005)
        short = client.chat.completions.create(**short_request).choices[0].message.content
        finished["short"] = time.monotonic()
        thread.join(120)
    assert short == short_alone and "".join(pieces) == long_alone.choices[0].message.content
    assert finished["short"] < finished["long"]
    deadline = time.monotonic() + 30  # the decoder records a batch after its last token is sent
    while service.batcher.batches_done < 3 and time.monotonic() < deadline:  # long alone, short alone, together
        time.sleep(0.01)
    batches = service.batcher.batches_since(2)
    assert len(batches) == 1 and batches[0].sequences == 2  # the short request joined the long one's batch


def test_batches_since_counts_past_the_kept_list():
    from lntune.serve.batcher import KEPT_BATCHES, Batcher
    from lntune.serve.decoding import BatchStats

    batcher = Batcher(decoder=None, max_batch=2, batch_wait_ms=1, max_queue=2)
    for index in range(KEPT_BATCHES + 10):
        batcher._record(BatchStats(sequences=index))  # what the decoder thread does after each batch
    assert len(batcher.batches) == KEPT_BATCHES and batcher.batches_done == KEPT_BATCHES + 10
    assert [b.sequences for b in batcher.batches_since(KEPT_BATCHES + 7)] == [KEPT_BATCHES + 7, KEPT_BATCHES + 8,
                                                                              KEPT_BATCHES + 9]
    assert batcher.batches_since(KEPT_BATCHES + 10) == [] and len(batcher.batches_since(0)) == KEPT_BATCHES
