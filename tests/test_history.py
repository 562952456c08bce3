"""History merge: only-new clients, whole-transcript clients, tails, repeated system messages."""

from __future__ import annotations

from typing import Any

from palaver.conversations.history import merge, message_key

Message = dict[str, Any]
S: Message = {"role": "system", "content": "be brief"}
U1: Message = {"role": "user", "content": "one"}
A1: Message = {"role": "assistant", "content": "1"}
U2: Message = {"role": "user", "content": "two"}
A2: Message = {"role": "assistant", "content": "2"}
U3: Message = {"role": "user", "content": "three"}


def test_empty_history() -> None:
    merged = merge([], [S, U1], 50)
    assert merged.sent == [S, U1]
    assert merged.new == [S, U1]


def test_only_new_messages() -> None:
    merged = merge([S, U1, A1], [U2], 50)
    assert merged.sent == [S, U1, A1, U2]
    assert merged.new == [U2]


def test_whole_transcript_is_not_doubled() -> None:
    merged = merge([S, U1, A1, U2, A2], [S, U1, A1, U2, A2, U3], 50)
    assert merged.sent == [S, U1, A1, U2, A2, U3]
    assert merged.new == [U3]


def test_whole_transcript_after_history_was_trimmed() -> None:
    merged = merge([S, U2, A2], [S, U1, A1, U2, A2, U3], 50)
    assert merged.sent == [S, U1, A1, U2, A2, U3]
    assert merged.new == [U3]


def test_a_tail_of_the_transcript() -> None:
    merged = merge([S, U1, A1, U2, A2], [U2, A2, U3], 50)
    assert merged.sent == [S, U1, A1, U2, A2, U3]
    assert merged.new == [U3]


def test_repeated_system_message_is_not_duplicated() -> None:
    merged = merge([S, U1, A1], [S, U2], 50)
    assert merged.sent == [S, U1, A1, U2]
    assert merged.new == [U2]


def test_a_new_system_message_goes_first_and_is_stored() -> None:
    other = {"role": "system", "content": "speak French"}
    merged = merge([S, U1, A1], [other, U2], 50)
    assert merged.sent == [S, other, U1, A1, U2]
    assert merged.new == [other, U2]


def test_assistant_reply_matches_whatever_optional_fields() -> None:
    stored = {"role": "assistant", "content": "1"}
    echoed = {"role": "assistant", "content": [{"type": "text", "text": "1"}], "refusal": None}
    assert message_key(stored) == message_key(echoed)


def test_sent_history_is_trimmed_but_request_kept_whole() -> None:
    history = [S, U1, A1, U2, A2]
    merged = merge(history, [U3, {"role": "assistant", "content": "example"}], 4)
    assert merged.sent[0] == S
    assert merged.sent[-2:] == [U3, {"role": "assistant", "content": "example"}]
    assert len(merged.sent) == 4


def test_regenerating_the_last_answer_sends_the_transcript_once() -> None:
    merged = merge([S, U1, A1, U2, A2], [S, U1, A1, U2], 50)
    assert merged.sent == [S, U1, A1, U2]
    assert merged.new == [U2]


def test_editing_the_last_question_sends_the_transcript_once() -> None:
    edited = {"role": "user", "content": "two, rather"}
    merged = merge([S, U1, A1, U2, A2], [S, U1, A1, edited], 50)
    assert merged.sent == [S, U1, A1, edited]
    assert merged.new == [edited]


def test_one_repeated_message_is_not_a_transcript() -> None:
    # an only-new client asking the first question again still gets its history
    merged = merge([S, U1, A1], [U1], 50)
    assert merged.sent == [S, U1, A1, U1]
    assert merged.new == [U1]


def _tool_turn(arguments: str, content: Any) -> list[Message]:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": arguments},
    }
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": content, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
    ]


def test_tool_call_arguments_compare_by_meaning() -> None:
    """Clients that send the transcript back re-serialise tool-call arguments: the seam holds."""
    stored = _tool_turn('{"city": "Paris", "days": 1.0, "units": {"a": 1, "b": [2]}}', None)
    resent = _tool_turn('{"units":{"b":[2],"a":1},"city":"Paris","days":1}', "")
    merged = merge(stored, [*resent, U2], 50)
    assert merged.new == [U2]
    assert merged.sent == [*resent, U2]


def _call(arguments: str, call_id: str | None = None, name: str = "weather") -> Message:
    call: Message = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call_id is not None:
        call["id"] = call_id
    return {"role": "assistant", "content": None, "tool_calls": [call]}


def test_a_tool_call_is_known_by_its_id_and_tool() -> None:
    """The Vercel AI SDK sends back the arguments as its schema parsed them (defaults filled
    in, unknown keys dropped); blank arguments come back as {}."""
    spaced = _call('{"city": "Paris", "extra": 1}', "call_1")
    assert message_key(spaced) == message_key(_call('{"city":"Paris","unit":"C"}', "call_1"))
    assert message_key(_call("", "call_2")) == message_key(_call("{}", "call_2"))
    assert message_key(spaced) != message_key(_call('{"city": "Paris"}', "call_2"))
    assert message_key(spaced) != message_key(_call('{"city": "Paris"}', "call_1", "clock"))


def test_without_an_id_a_tool_call_is_known_by_its_arguments_meaning() -> None:
    assert message_key(_call('{"city": "Paris", "days": 1.0}')) == message_key(
        _call('{"days":1,"city":"Paris"}')
    )
    assert message_key(_call("")) == message_key(_call(" {} "))
    assert message_key(_call('{"city": "Paris"}')) != message_key(_call('{"city": "Rome"}'))


def test_custom_tool_calls_compare_by_id_and_tool_or_input() -> None:
    def turn(name: str, text: str, call_id: str | None = "c1") -> Message:
        call = {"id": call_id, "type": "custom", "custom": {"name": name, "input": text}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}

    assert message_key(turn("shell", "ls")) == message_key(turn("shell", "ls -1"))
    assert message_key(turn("shell", "ls")) != message_key(turn("python", "ls"))
    assert message_key(turn("shell", "ls", None)) != message_key(turn("shell", "rm", None))
    assert message_key(turn("shell", "ls", None)) == message_key(turn("shell", "ls", None))


def test_text_parts_and_a_string_are_the_same_content() -> None:
    parts = {"role": "assistant", "content": [{"type": "text", "text": "1"}]}
    merged = merge([S, U1, A1], [S, U1, parts, U2], 50)
    assert merged.new == [U2]
