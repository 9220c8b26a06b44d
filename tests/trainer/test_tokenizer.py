"""The CLIP tokenizer against open_clip's (a test-only reference), plus its own contracts."""

import html
import random

import ftfy
import open_clip
import pytest
import torch

from trainer.tokenizer import SimpleTokenizer, _is_plain_ascii, clean_text, default_tokenizer, tokenize

LONG = " ".join(["a photograph of an extraordinarily photogenic golden retriever"] * 20)

STRINGS = [
    "a photo of a dog.",
    "A Photo Of A DOG!!!",
    "",
    "   ",
    "\t\n \r\n",
    "café crème brûlée, naïve façade",
    "Ünïcödé Ångström Øresund ß straße",
    "日本語のテキスト 中文 한국어",
    "emoji 😀🐶🎉 👩‍👩‍👧 and flags 🇯🇵",
    "fish &amp; chips &lt;3 &quot;quoted&quot; &#39;x&#39; &amp;amp;lt;",
    "<b>bold</b> tags & <i>it</i>",
    "don't won't I'm you're we've they'll she'd it's DON'T",
    "3.14159 1,000,000 2024-11-27 007 ½ ² ٣",
    "!!!??? ... --- ((())) $$$ @#%^&* ~~~",
    "mojibake: â€œquotesâ€\x9d and Ã©",
    "ｆｕｌｌｗｉｄｔｈ ＬＯＵＤ ＮＯＩＳＥＳ and ﬁ ligature",
    "tabs\tand\nnewlines\u00a0nbsp\u2028sep",
    "control\x00\x07chars\x1b[31mred\x1b[0m",
    "https://example.com/path?q=1&r=2#frag user@example.com",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "Ελληνικά русский עברית العربية हिन्दी ไทย",
    "\u0301\u0300 combining marks e\u0301",
]


@pytest.fixture(scope="module")
def reference():
    return open_clip.tokenizer.SimpleTokenizer()


@pytest.mark.parametrize("text", STRINGS)
def test_encode_matches_open_clip(text, reference):
    assert default_tokenizer().encode(text) == reference.encode(text)


def test_tokenize_matches_open_clip_batch_with_padding_and_specials():
    ours = tokenize(STRINGS, truncate=True)
    ref = open_clip.tokenize(STRINGS)
    assert ours.dtype == torch.long and ours.shape == (len(STRINGS), 77)
    assert torch.equal(ours, ref)
    assert ours[2, 0].item() == 49406 and ours[2, 1].item() == 49407 and ours[2, 2:].abs().sum() == 0


def test_random_unicode_matches_open_clip(reference):
    rng = random.Random(1)
    alphabet = "abcXYZ019 .,!?'&;<>#é中😀\u0301\t\n\u3000ﬁ"
    alphabet += "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(200))
    tok = default_tokenizer()
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert tok.encode(text) == reference.encode(text), repr(text)


def test_plain_ascii_fast_path_is_a_fixed_point_of_ftfy_and_unescape():
    # The cleaner skips ftfy for printable ASCII without '&'; prove that changes nothing.
    rng = random.Random(2)
    printable = [chr(c) for c in range(0x20, 0x7F)]
    for _ in range(2000):
        text = "".join(rng.choice(printable) for _ in range(rng.randrange(0, 60)))
        if _is_plain_ascii(text):
            assert html.unescape(html.unescape(ftfy.fix_text(text))) == text, repr(text)
    assert not _is_plain_ascii("a &amp; b") and not _is_plain_ascii("tab\there") and not _is_plain_ascii("é")


@pytest.mark.parametrize("context_length", [77, 16])
def test_truncate_cuts_and_keeps_end_token_like_open_clip(context_length):
    ours = tokenize([LONG, "short"], context_length=context_length, truncate=True)
    ref = open_clip.tokenize([LONG, "short"], context_length=context_length)
    assert torch.equal(ours, ref)
    assert ours[0, -1].item() == 49407


def test_too_long_without_truncate_names_the_text_and_its_length():
    n_tokens = len(default_tokenizer().encode(LONG)) + 2
    with pytest.raises(ValueError) as err:
        tokenize(["fine", LONG])
    message = str(err.value)
    assert "text 1" in message and LONG[:40] in message and f"{n_tokens} tokens" in message
    assert "context_length 77" in message and "truncate=True" in message


def test_text_exactly_filling_the_context_is_not_an_error():
    tok = default_tokenizer()
    words = ["dog"] * 75  # 'dog' is one token: 75 + start + end = 77
    row = tokenize(" ".join(words))[0]
    assert row[-1].item() == tok.eot_token_id and (row[1:-1] == tok.encode("dog")[0]).all()


def test_decode_round_trips_cleaned_text(reference):
    tok = default_tokenizer()
    for text in ["a photo of a dog", "Héllo Wörld 日本語 😀", "fish &amp; chips"]:
        ids = tok.encode(text)
        assert tok.decode(ids) == reference.decode(ids)
        assert tok.decode(ids).strip() == clean_text(text)
    row = tokenize("a red circle")[0]
    assert tok.decode(row[: int((row != 0).sum())]) == "<start_of_text>a red circle <end_of_text>"


def test_special_ids_vocab_size_and_single_tensor_input():
    tok = default_tokenizer()
    assert (tok.sot_token_id, tok.eot_token_id, tok.vocab_size) == (49406, 49407, 49408)
    assert tokenize("a dog").shape == (1, 77)
    assert tokenize([]).shape == (0, 77)
    with pytest.raises(ValueError, match="context_length"):
        tokenize("a dog", context_length=1)


def test_word_cache_is_bounded_and_results_stay_identical(reference):
    tok = SimpleTokenizer(cache_size=8)
    text = "<start_of_text> one two three four five six seven eight nine ten eleven twelve <end_of_text>"
    first = tok.encode(text)
    assert len(tok._cache) <= 8
    assert tok.encode(text) == first == reference.encode(text)
    assert first[0] == tok.sot_token_id and first[-1] == tok.eot_token_id


def test_default_tokenizer_is_built_once():
    assert default_tokenizer() is default_tokenizer()


def test_a_text_that_is_not_a_string_is_a_type_error_naming_it():
    # It used to be an AttributeError ("'int' object has no attribute 'isascii'") from the text cleaning.
    with pytest.raises(TypeError, match=r"^text 1 is int \(7\), not str"):
        tokenize(["a dog", 7])
    with pytest.raises(TypeError, match=r"^text 0 is bytes"):
        tokenize([b"a dog"])
    with pytest.raises(TypeError, match=r"^text 0 is NoneType"):
        tokenize([None])
    assert tokenize(("a dog", "a cat")).shape == (2, 77)  # any sequence of strings
