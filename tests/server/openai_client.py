"""The `openai` Python package against `tomoe-run serve`: chat and completions, whole and
streamed, and an error. Usage: python3 openai_client.py BASE_URL (e.g. http://127.0.0.1:8080).
Prints one line per check and `OK` at the end; exits non-zero on any failure."""

import sys

try:
    import openai
    from openai import OpenAI
except ImportError as e:
    print(f"the openai package is missing ({e}): pip install openai (.ci/run installs it)", file=sys.stderr)
    sys.exit(2)

base = sys.argv[1].rstrip("/")
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)

models = client.models.list().data
assert len(models) == 1, models
model = models[0].id
print("model:", model)

messages = [{"role": "user", "content": "What is the capital of France?"}]
whole = client.chat.completions.create(model=model, messages=messages, max_tokens=16, temperature=0)
text = whole.choices[0].message.content
assert whole.object == "chat.completion", whole
assert whole.choices[0].message.role == "assistant", whole
assert text and text.strip(), whole
assert whole.choices[0].finish_reason in ("stop", "length"), whole
assert whole.usage.completion_tokens > 0 and whole.usage.prompt_tokens > 0, whole.usage
assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
print("chat:", repr(text), whole.choices[0].finish_reason)

pieces, finish, roles = [], None, []
stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=16, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
usage = None
for chunk in stream:
    assert chunk.object == "chat.completion.chunk", chunk
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.role:
            roles.append(c.delta.role)
        pieces.append(c.delta.content or "")
        finish = c.finish_reason or finish
streamed = "".join(pieces)
assert roles == ["assistant"], roles
assert streamed == text, (streamed, text)
assert finish == whole.choices[0].finish_reason, finish
assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens, usage
print("chat stream:", len(pieces), "chunks, same text,", finish)

comp = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0)
assert comp.object == "text_completion", comp
assert comp.choices[0].text.strip(), comp
print("completion:", repr(comp.choices[0].text), comp.choices[0].finish_reason)
parts = [c.choices[0].text for c in client.completions.create(
    model=model, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True) if c.choices]
assert "".join(parts) == comp.choices[0].text, (parts, comp.choices[0].text)
print("completion stream: same text")

try:
    client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=4)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404 and e.code == "model_not_found", e
    print("unknown model:", e.status_code, e.code)

try:
    client.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=5)
    raise AssertionError("temperature 5 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.param == "temperature", e
    print("bad temperature:", e.status_code, e.param)

print("OK")
