"""data/templates.py: the one place prompts meet a chat template, and the rule of when plain text does."""
import copy

from dpokit.data.templates import as_conversation, as_transcript, render_chat, render_prompt, templated, transcript_turns
from dpokit.judges import Sample
from dpokit.judges.classifier import ClassifierJudge

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def plain(tokenizer):
    """The same tokenizer without a chat template."""
    untemplated = copy.deepcopy(tokenizer)
    untemplated.chat_template = None
    return untemplated


def test_render_chat_adds_the_generation_prompt_or_the_answer_turn(tiny_tokenizer):
    assert render_chat(tiny_tokenizer, "Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat(tiny_tokenizer, CHAT, "Hello") == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                                                          "<|im_start|>user\nHi<|im_end|>\n"
                                                          "<|im_start|>assistant\nHello<|im_end|>\n")


def test_plain_text_is_templated_unless_asked_not_to_and_messages_always_are(tiny_tokenizer):
    assert templated(tiny_tokenizer, "Hi") and not templated(tiny_tokenizer, "Hi", template=False)
    assert templated(tiny_tokenizer, CHAT, template=False)
    assert render_prompt(tiny_tokenizer, "Hi", template=False) == "Hi"
    assert render_prompt(tiny_tokenizer, CHAT, template=False) == render_chat(tiny_tokenizer, CHAT)


def test_without_a_template_text_stays_verbatim_and_messages_become_role_lines(tiny_tokenizer):
    untemplated = plain(tiny_tokenizer)
    assert not templated(untemplated, CHAT)
    assert render_prompt(untemplated, "Hi") == "Hi"
    assert render_prompt(untemplated, CHAT) == "system: Be brief.\nuser: Hi\nassistant:"


def test_a_reward_model_reads_the_conversation_as_training_renders_it(tiny_tokenizer):
    sample = Sample(CHAT, "Hello", (), ())
    assert ClassifierJudge(None, tiny_tokenizer, "hf:x").text(sample) == render_chat(tiny_tokenizer, CHAT, "Hello")
    # no template: the reward model's own plain layout ('role: content' lines, then the response)
    assert ClassifierJudge(None, plain(tiny_tokenizer), "hf:x").text(sample) == "system: Be brief.\nuser: HiHello"


def test_an_hh_transcript_reads_as_its_turns_and_back():
    text = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant:"
    turns = transcript_turns(text)
    assert turns == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                     {"role": "user", "content": "Bye"}]
    assert as_transcript(turns) == text
    assert transcript_turns("\n\nHuman: a\n\nHuman: b\n\nAssistant:") == [{"role": "user", "content": "a\n\nb"}]
    for other in ("Hi", "\n\nHuman: Hi", "\n\nHuman: Hi\n\nAssistant: done", "x\n\nHuman: Hi\n\nAssistant:"):
        assert transcript_turns(other) is None
        assert as_conversation(other) == [{"role": "user", "content": other}]


def test_sampling_renders_a_transcript_as_training_does(tiny_tokenizer):
    text = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant:"
    assert render_prompt(tiny_tokenizer, text) == render_chat(tiny_tokenizer, transcript_turns(text))
