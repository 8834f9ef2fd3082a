"""VideoAnswerer: the same answers as `redvillm-eval predict`, batched or not, with stops and streaming."""

import json

import pytest
import torch
from click.testing import CliRunner

from redvillm import VideoAnswerer, open_cache
from redvillm.errors import UserError
from redvillm.evaluate.predict import PredictConfig, read_predictions, run_predict

TOKENS = 12


@pytest.fixture(scope="module")
def answerer(trained_run):
    with VideoAnswerer.load(trained_run, device="cpu") as loaded:
        yield loaded


@pytest.fixture(scope="module")
def questions(qa_file):
    rows = [(r["video_id"], r["q"]) for r in json.loads(qa_file.read_text())]
    return rows + [("order_0000", "哪个颜色先出现？")]


@pytest.fixture(scope="module")
def predicted(trained_run, small_cache, questions, tmp_path_factory):
    """predict's answers, question by question, at greedy decoding."""
    root = tmp_path_factory.mktemp("predict")
    rows = [{"video_name": v, "question": q, "answer": "x", "question_id": f"q{i}"} for i, (v, q) in enumerate(questions)]
    (root / "msvd_qa.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    run_predict(PredictConfig(str(trained_run), str(small_cache), str(root / "msvd_qa.json"), str(root / "p.jsonl"),
                              batch_size=3, max_new_tokens=TOKENS, device="cpu"))
    records = read_predictions(root / "p.jsonl")
    return [records[f"q{i}"]["pred"] for i in range(len(questions))]


def cached(answerer, small_cache, video_id):
    return answerer.family.pool(torch.from_numpy(open_cache(small_cache)[video_id]))


def test_cached_tokens_answer_as_predict_does_batched_or_one_by_one(answerer, small_cache, questions, predicted):
    items = [(cached(answerer, small_cache, v), q) for v, q in questions]
    assert answerer.answer(items, max_new_tokens=TOKENS, batch_size=3) == predicted
    assert answerer.answer(items, max_new_tokens=TOKENS, batch_size=8) == predicted
    assert [answerer.answer([item], max_new_tokens=TOKENS)[0] for item in items] == predicted


def test_video_files_give_the_cache_tokens_and_predict_answers(answerer, small_cache, synthetic_videos, questions,
                                                               predicted):
    temporal, spatial = answerer.tokens(synthetic_videos / "order_0000.mp4")
    want_t, want_s = cached(answerer, small_cache, "order_0000")
    assert torch.equal(temporal, want_t) and torch.equal(spatial, want_s)
    items = [(str(synthetic_videos / f"{v}.mp4"), q) for v, q in questions]
    assert answerer.answer(items, max_new_tokens=TOKENS, batch_size=4) == predicted


def test_stop_strings_cut_the_answer_and_end_generation(answerer, small_cache, questions, predicted, monkeypatch):
    index, full = max(enumerate(predicted), key=lambda p: len(p[1]))
    stop = full[len(full) // 2:][:2]  # a piece from the middle of the longest answer
    want = full[: full.find(stop)].rstrip()
    lengths = []
    generate = answerer.model.backbone.generate
    monkeypatch.setattr(answerer.model.backbone, "generate",
                        lambda **kw: lengths.append(generate(**kw).shape[1]) or generate(**kw))
    video, question = questions[index]
    item = (cached(answerer, small_cache, video), question)
    assert answerer.answer([item], max_new_tokens=TOKENS, stop=["never seen", stop])[0] == want
    assert stop not in want and lengths[0] < TOKENS  # the row stopped before its token limit
    other = (cached(answerer, small_cache, questions[0][0]), questions[0][1])
    both = answerer.answer([other, item], max_new_tokens=[TOKENS, TOKENS], stop=[stop], batch_size=2)
    first = predicted[0][: predicted[0].find(stop)].rstrip() if stop in predicted[0] else predicted[0]
    assert both == [first, want]


def test_per_item_limits_and_stops_match_separate_calls(answerer, small_cache, questions, predicted):
    items = [(cached(answerer, small_cache, v), q) for v, q in questions[2:5]]
    stop = predicted[3][4:6]
    limits, stops = [2, TOKENS, 5], [[], [stop], ["never seen"]]
    alone = [answerer.generate([item], max_new_tokens=n, stop=s)[0] for item, n, s in zip(items, limits, stops)]
    assert answerer.generate(items, max_new_tokens=limits, stop=stops, batch_size=3) == alone
    assert (alone[0].finish_reason, alone[0].completion_tokens, alone[2].completion_tokens) == ("length", 2, 5)
    assert alone[1].finish_reason == "stop" and alone[1].text == predicted[3][: predicted[3].find(stop)].rstrip()
    assert alone[0].prompt_tokens > 8  # the question and the video tokens


def test_streamed_pieces_add_up_to_the_answers(answerer, small_cache, questions, predicted):
    items = [(cached(answerer, small_cache, v), q) for v, q in questions]
    pieces: dict[int, list[str]] = {}
    answers = answerer.answer(items, max_new_tokens=TOKENS, batch_size=4,
                              on_text=lambda i, text: pieces.setdefault(i, []).append(text))
    assert answers == predicted
    assert ["".join(pieces.get(i, [])) for i in range(len(items))] == answers
    assert max(len(p) for p in pieces.values()) > 1  # really piece by piece


def test_bad_input_is_refused_in_one_line(answerer, small_cache, synthetic_videos, tmp_path):
    tokens = cached(answerer, small_cache, "order_0000")
    for question in ("", "   "):
        with pytest.raises(UserError, match="question is empty"):
            answerer.answer([(tokens, question)])
    (tmp_path / "bad.mp4").write_text("not a video")
    with pytest.raises(UserError, match="bad.mp4: cannot read this video"):
        answerer.tokens(tmp_path / "bad.mp4")
    good, bad = answerer.tokens_each([synthetic_videos / "order_0000.mp4", tmp_path / "bad.mp4"])
    assert torch.equal(good[1], tokens[1]) and isinstance(bad, UserError)
    with pytest.raises(UserError, match="pooled token"):
        answerer.answer([(tokens[0], "What?")])


def test_ask_refuses_an_empty_question_in_one_line(trained_run, synthetic_videos):
    from redvillm.evaluate.cli import main

    result = CliRunner().invoke(main, ["ask", str(trained_run), str(synthetic_videos / "order_0000.mp4"), " "])
    assert result.exit_code == 2 and result.output.strip().count("\n") == 0
    assert "question is empty" in result.output


def test_streaming_holds_back_what_may_still_become_a_stop_string(answerer):
    from redvillm.generation import _Rows

    tokenizer = answerer.model.chat.tokenizer
    ids = tokenizer("red box moves", add_special_tokens=False)["input_ids"]
    pieces = []
    rows = _Rows(answerer.model.chat, [len(ids) + 5], [("moves!",)], lambda row, text: pieces.append(text))
    rows.put(torch.tensor([[7, 8]]))  # the prompt comes first and is not part of the answer
    for token in ids:
        rows.put(torch.tensor([token]))
    assert "".join(pieces) == "red box"  # " moves" could still grow into "moves!"
    rows.flush(["red box moves"])
    assert "".join(pieces) == "red box moves"
