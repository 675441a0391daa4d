"""Tokenisation follows the chat template: its BOS, its turn terminator, truncation while tokenising."""

from conftest import make_tokenizer
from tokenizers import processors

from igds.data import Example, response_terminator, tokenize_example

GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def gemma_like_tokenizer():
    """A tokenizer that adds <bos> itself, with a template that writes {{ bos_token }} too (Gemma, Llama-3)."""
    tok = make_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]})
    bos = tok.convert_tokens_to_ids("<bos>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                                         special_tokens=[("<bos>", bos)])
    tok.bos_token, tok.eos_token = "<bos>", "<eos>"
    tok.chat_template = GEMMA_TEMPLATE
    assert tok("hi")["input_ids"][0] == bos  # the tokenizer really adds BOS
    return tok


def example(prompt="What is 2+3?", response="5"):
    return Example(id="a", messages=[{"role": "user", "content": prompt}], response=response, record={},
                   dialect="messages", source="mem", line=1)


def test_template_bos_is_not_doubled():
    tok = gemma_like_tokenizer()
    t = tokenize_example(tok, example())
    assert t.ids.count(tok.bos_token_id) == 1 and t.ids[0] == tok.bos_token_id


def test_tokenizer_bos_is_kept_when_the_template_has_none():
    tok = gemma_like_tokenizer()
    tok.chat_template = GEMMA_TEMPLATE.replace("{{ bos_token }}", "")
    t = tokenize_example(tok, example())
    assert t.ids[0] == tok.bos_token_id and t.ids.count(tok.bos_token_id) == 1


def test_response_ends_with_the_templates_turn_terminator_not_eos():
    tok = gemma_like_tokenizer()
    assert response_terminator(tok) == "<end_of_turn>"
    t = tokenize_example(tok, example())
    assert tok.decode(t.ids[t.prompt_len:]) == "5<end_of_turn>"
    assert tok.convert_tokens_to_ids("<eos>") not in t.ids
    # the tokenised conversation is exactly what the template renders (minus the newline between turns)
    full = tok.apply_chat_template([*example().messages, {"role": "assistant", "content": "5"}], tokenize=False)
    assert tok.decode(t.ids) == full.rstrip("\n")


def test_chatml_terminator_and_plain_text_fall_back_to_eos():
    tok = make_tokenizer()
    assert response_terminator(tok) == "<|im_end|>"
    assert response_terminator(tok, use_chat_template=False) == tok.eos_token
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # writes nothing after the answer
    assert response_terminator(tok) == tok.eos_token


def test_truncation_happens_while_tokenising():
    tok = make_tokenizer()
    tok.model_max_length = 32
    long = example(response="x" * 200)
    t = tokenize_example(tok, long, max_length=24)
    assert t.truncated and len(t.ids) == 24
    assert t.ids == tokenize_example(tok, long, max_length=10**6).ids[:24]
    # no "sequence length is longer than the maximum ... indexing errors" warning for a row igds truncates
    assert not tok.deprecation_warnings.get("sequence-length-is-longer-than-the-specified-maximum")
    exact = tokenize_example(tok, long, max_length=10**6)
    assert not tokenize_example(tok, long, max_length=len(exact.ids)).truncated
    assert tokenize_example(tok, long, max_length=len(exact.ids) - 1).truncated
