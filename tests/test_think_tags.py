from __future__ import annotations

from shaping.data import extract_thinking, strip_thinking, validate_think_tags


class TestValidateThinkTags:
    def test_no_tags_valid(self) -> None:
        assert validate_think_tags("Just a response") == (True, None)

    def test_matched_pair_valid(self) -> None:
        assert validate_think_tags("<think>reasoning</think>response") == (True, None)

    def test_unclosed_tag_invalid(self) -> None:
        is_valid, error = validate_think_tags("<think>stuck in loop...")
        assert not is_valid
        assert error == "unclosed_think_tag"

    def test_orphaned_close_invalid(self) -> None:
        is_valid, error = validate_think_tags("response</think>")
        assert not is_valid
        assert error == "orphaned_close_tags"

    def test_nested_invalid(self) -> None:
        assert validate_think_tags("<think>a<think>b</think></think>") == (False, "nested_think_tags")

    def test_two_blocks_valid(self) -> None:
        assert validate_think_tags("<think>a</think>x<think>b</think>y") == (True, None)


class TestStripThinking:
    def test_strips_complete_block(self) -> None:
        assert strip_thinking("<think>hidden</think>visible") == "visible"

    def test_handles_no_tags(self) -> None:
        assert strip_thinking("just text") == "just text"

    def test_strips_orphaned_close(self) -> None:
        # When <think> was in prompt
        assert strip_thinking("reasoning</think>response") == "response"


def test_extract_thinking() -> None:
    assert extract_thinking("<think> a </think>x<think>b</think>") == ["a", "b"]
    assert extract_thinking("none") == []
