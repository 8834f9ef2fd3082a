"""The results tables: the paper's rows beside ours only when comparable; per-type accuracy."""

from rich.console import Console

from redvillm.evaluate.metrics import aggregate
from redvillm.evaluate.report import comparability, dataset_from_name, paper_table, per_type_table, results_table


def render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_qa_table_shows_paper_rows_for_the_dataset_and_per_type_accuracy():
    records = [{"task": "qa", "qtype": "motion", "pred": "yes", "answer": "yes"},
               {"task": "qa", "qtype": "color", "pred": "blue", "answer": "red"}]
    judge = {"counts": {"judged": 2, "judge_failed": 0}, "accuracy": 0.5, "mean_score": 3.25,
             "judge": {"model": "gpt-3.5-turbo-0613"},
             "by_type": {"motion": {"judged": 1, "accuracy": 1.0, "mean_score": 5.0},
                         "color": {"judged": 1, "accuracy": 0.0, "mean_score": 1.5}}}
    results = {"task": "qa", "dataset": "activitynet", "metrics": aggregate(records), "judge": judge,
               "protocol": {"name": "videochatgpt"}, "scoring": "original"}
    assert comparability(results) == {"comparable": True, "why": "Video-ChatGPT's messages and a "
                                      "gpt-3.5-turbo-0613 judge"}
    assert paper_table(results) is None
    text = render(results_table(results))
    assert "ActivityNet-QA" in text and "50.0" in text and "3.25" in text
    assert "RED-VILLM LLaVA-7B (paper)" in text and "39.2" in text  # the paper's ActivityNet column
    by_type = render(per_type_table(results))
    assert "motion" in by_type and "100.0" in by_type and "color" in by_type


def test_benchmark_criterion_table_and_dataset_names():
    results = {"task": "tu", "dataset": None, "metrics": aggregate([]), "judge": {"mean_score": 2.5, "counts": {}},
               "protocol": {"name": "videochatgpt"}}
    text = render(results_table(results))
    assert "TU score" in text and "2.50" in text and "1.98" not in text  # no judge model named: not comparable
    apart = render(paper_table(results))
    assert "NOT comparable" in apart and "1.98" in apart  # Video-ChatGPT's TU, printed apart
    assert per_type_table(results) is None
    assert [dataset_from_name(n) for n in ("MSRVTT_QA.json", "msvd-test.json", "tgif_frameqa.jsonl", "anet_q.json")] \
        == ["msrvtt", "msvd", "tgif", "activitynet"]


def test_our_protocol_or_another_judge_keeps_the_paper_apart():
    base = {"task": "ci", "dataset": None, "metrics": aggregate([]), "scoring": "redvillm",
            "judge": {"mean_score": 3.0, "counts": {}, "judge": {"model": "gpt-3.5-turbo-0125"}}}
    ours = {**base, "protocol": {"name": "redvillm"}}
    assert "redvillm protocol" in comparability(ours)["why"] and not comparability(ours)["comparable"]
    text = render(results_table(ours))
    assert "2.40" not in text and "not comparable" in text
    other = {**base, "protocol": {"name": "videochatgpt"},
             "judge": {**base["judge"], "judge": {"model": "qwen2.5-7b-instruct"}}}
    assert "not gpt-3.5-turbo" in comparability(other)["why"]
    assert "2.40" in render(paper_table(other)) and "2.40" not in render(results_table(other))
    same = {**base, "protocol": {"name": "videochatgpt"}}
    assert comparability(same)["comparable"] and "--original-scoring" in comparability(same)["why"]
    assert "2.40" in render(results_table(same)) and paper_table(same) is None
