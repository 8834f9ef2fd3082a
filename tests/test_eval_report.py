"""The results tables: our row above the paper's, and ActivityNet-QA's per-type accuracy."""

from rich.console import Console

from redvillm.evaluate.metrics import aggregate
from redvillm.evaluate.report import dataset_from_name, per_type_table, results_table


def render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_qa_table_shows_paper_rows_for_the_dataset_and_per_type_accuracy():
    records = [{"task": "qa", "qtype": "motion", "pred": "yes", "answer": "yes"},
               {"task": "qa", "qtype": "color", "pred": "blue", "answer": "red"}]
    judge = {"counts": {"judged": 2, "judge_failed": 0}, "accuracy": 0.5, "mean_score": 3.25,
             "by_type": {"motion": {"judged": 1, "accuracy": 1.0, "mean_score": 5.0},
                         "color": {"judged": 1, "accuracy": 0.0, "mean_score": 1.5}}}
    results = {"task": "qa", "dataset": "activitynet", "metrics": aggregate(records), "judge": judge}
    text = render(results_table(results))
    assert "ActivityNet-QA" in text and "50.0" in text and "3.25" in text
    assert "RED-VILLM LLaVA-7B (paper)" in text and "39.2" in text  # the paper's ActivityNet column
    by_type = render(per_type_table(results))
    assert "motion" in by_type and "100.0" in by_type and "color" in by_type


def test_benchmark_criterion_table_and_dataset_names():
    results = {"task": "tu", "dataset": None, "metrics": aggregate([]), "judge": {"mean_score": 2.5, "counts": {}}}
    text = render(results_table(results))
    assert "TU score" in text and "2.50" in text and "1.98" in text  # Video-ChatGPT's TU
    assert per_type_table(results) is None
    assert [dataset_from_name(n) for n in ("MSRVTT_QA.json", "msvd-test.json", "tgif_frameqa.jsonl", "anet_q.json")] \
        == ["msrvtt", "msvd", "tgif", "activitynet"]
