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
    return answerer.cached(open_cache(small_cache), video_id)


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


def test_rows_stop_and_stream_where_generate_returns_the_prompt_too(tmp_path):
    """Qwen2-VL generates from input_ids (its 3-D rope needs them): the prompt comes back with
    the answer, so per-row limits and stops must count from where the answer starts."""
    from redvillm.data.tiny_qwen2_vl import TinyQwen2VLConfig, build_tiny_qwen2_vl
    from redvillm.generation import generate_rows
    from redvillm.model_io import build_video_llm

    qwen = build_tiny_qwen2_vl(tmp_path / "qwen", TinyQwen2VLConfig(variant="qwen2_vl"))
    llm = build_video_llm(str(qwen), "both", "copy", torch.device("cpu"), torch.float32)
    width = 4 * llm.backbone.config.vision_config.embed_dim
    generator = torch.Generator().manual_seed(0)
    prompts = [(q, torch.randn(t, width, generator=generator), torch.randn(64, width, generator=generator))
               for q, t in (("What happens?", 3), ("方块往哪个方向移动？", 5), ("Which colour?", 4))]
    full = [generate_rows(llm, [p], TOKENS, {})[0].text for p in prompts]
    stop = full[1][len(full[1]) // 2:][:1]
    limits, stops = [3, TOKENS, TOKENS], [[], [stop], []]
    alone = [generate_rows(llm, [p], n, {}, [s])[0] for p, n, s in zip(prompts, limits, stops)]
    pieces = {}
    together = generate_rows(llm, prompts, limits, {}, stops, lambda i, t: pieces.setdefault(i, []).append(t))
    assert together == alone and alone[0].completion_tokens == 3
    assert alone[1].text == full[1][: full[1].find(stop)].rstrip() and alone[2].text == full[2]
    assert ["".join(pieces.get(i, [])) for i in range(3)] == [a.text for a in together]


def test_recent_files_are_not_decoded_again_unless_changed(trained_run, video_copy, monkeypatch):
    import os

    answerer = VideoAnswerer.load(trained_run, device="cpu", remember_videos=2)
    encoded = []
    encode = answerer._encode
    monkeypatch.setattr(answerer, "_encode", lambda *args, **kw: encoded.append(1) or encode(*args, **kw))
    first, second, third = (video_copy / f"order_000{i}.mp4" for i in range(3))
    with answerer:
        tokens = answerer.tokens(first)
        assert answerer.tokens_each([first, first, second]) == [tokens, tokens, answerer.tokens(second)]
        assert len(encoded) == 2  # the first file once, the second once
        answerer.tokens_each([first], remember=False)
        os.utime(first, ns=(1, 1))  # a changed file is read anew
        assert torch.equal(answerer.tokens(first)[1], tokens[1]) and len(encoded) == 4
        answerer.tokens(third)  # remember_videos=2: the second file is forgotten
        answerer.tokens(second)
        assert len(encoded) == 6


def test_a_cancelled_row_stops_and_leaves_the_others_alone(answerer, small_cache, questions, predicted):
    items = [(cached(answerer, small_cache, v), q) for v, q in questions[:3]]
    gone = {1}
    got = answerer.generate(items, max_new_tokens=TOKENS, batch_size=3, cancelled=lambda i: i in gone)
    assert [got[0].text, got[2].text] == [predicted[0], predicted[2]]
    assert got[1].completion_tokens == 1 and got[1].finish_reason == "stop"
    assert got[1].text == answerer.answer([items[1]], max_new_tokens=1)[0] != predicted[1]


def test_a_checkpoint_whose_generation_config_samples_still_answers_greedily(tiny_llava, trained_run, small_cache,
                                                                               qa_file, tmp_path):
    """Chat checkpoints often ship do_sample=True: 'greedy' answers must not quietly become samples."""
    import shutil

    model, run = tmp_path / "sampling-llava", tmp_path / "run"
    shutil.copytree(tiny_llava, model)
    config = json.loads((model / "generation_config.json").read_text())
    config.update(do_sample=True, top_k=50, temperature=5.0)
    (model / "generation_config.json").write_text(json.dumps(config))
    shutil.copytree(trained_run, run)  # the same adapter over the copy whose generation config samples
    run_config = json.loads((run / "redvillm_config.json").read_text())
    (run / "redvillm_config.json").write_text(json.dumps({**run_config, "model": str(model)}))
    video_id, question = json.loads(qa_file.read_text())[0]["video_id"], "What happens?"
    answers = []
    with VideoAnswerer.load(run, device="cpu") as loaded:
        tokens = loaded.cached(open_cache(small_cache), video_id)
        for seed in range(3):
            torch.manual_seed(seed)
            answers.append(loaded.answer([(tokens, question)], max_new_tokens=TOKENS)[0])
    assert answers[0] == answers[1] == answers[2]
