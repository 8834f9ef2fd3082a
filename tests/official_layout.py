"""A stand-in for Video-ChatGPT's quantitative_evaluation/ folder, for tests.

Same file names and code structure as the public scripts (annotate() builds the messages from
string literals and f-strings and calls openai.ChatCompletion.create; main() fills the per-row
dict from the prediction rows), but every prompt word here is invented for these tests.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from redvillm.evaluate.judge.official import SCRIPTS

QA_READS = {"question": ("q", "Q"), "answer": ("a", "A"), "pred": ("pred", "pred")}
CO_READS = {"question1": ("q1", "Q1"), "question2": ("q2", "Q2"), "answer": ("a", "A"),
            "pred1": ("pred1", "pred1"), "pred2": ("pred2", "pred2")}


def _script(criterion: str) -> str:
    reads = CO_READS if criterion == "co" else QA_READS
    lines = [
        "import openai", "import os", "import json", "import ast",
        "from multiprocessing.pool import Pool", "", "",
        "def annotate(prediction_set, caption_files, output_dir):",
        "    for file in caption_files:",
        "        key = file[:-5]",
        "        qa_set = prediction_set[key]",
        *[f"        {var} = qa_set['{inner}']" for var, (inner, _) in reads.items()],
        "        try:",
        "            completion = openai.ChatCompletion.create(",
        '                model="gpt-3.5-turbo",',
        "                messages=[",
        "                    {",
        '                        "role": "system",',
        '                        "content":',
        f'                            "Pretend grader for criterion {criterion}. "',
        '                            "Braces stay {as they are} here."',
        '                            "--"',
        '                            "- a bullet\\n"',
        '                            "- another bullet"',
        "                    },",
        "                    {",
        '                        "role": "user",',
        '                        "content":',
        '                            "Look at this pair:\\n\\n"',
        *[f'                            f"<{var}> {{{var}}}\\n"' for var in reads],
        '                            f"{{not a field}} tail " +',
        "                            \"Answer with {'score': 1.5} only.\"",
        "                    }",
        "                ]",
        "            )",
        '            response_message = completion["choices"][0]["message"]["content"]',
        "            response_dict = ast.literal_eval(response_message)",
        "            result_qa_pair = [response_dict, qa_set]",
        '            with open(f"{output_dir}/{key}.json", "w") as f:',
        "                json.dump(result_qa_pair, f)",
        "        except Exception as e:",
        "            print(f\"Error processing file '{key}': {e}\")",
        "", "",
        "def main():",
        "    pred_contents = []",
        "    prediction_set = {}",
        "    for sample in pred_contents:",
        "        id = sample['video_name']",
        *[f"        {var} = sample['{field}']" for var, (_, field) in reads.items()],
        "        qa_set = {" + ", ".join(f'"{inner}": {var}' for var, (inner, _) in reads.items()) + "}",
        "        prediction_set[id] = qa_set",
        "", "",
        'if __name__ == "__main__":',
        "    main()",
    ]
    return "\n".join(lines) + "\n"


def write_layout(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for criterion, name in SCRIPTS.items():
        (folder / name).write_text(_script(criterion), encoding="utf-8")
    return folder


def messages_the_script_sends(folder: Path, criterion: str, row: dict, tmp: Path) -> list[dict]:
    """Run the stand-in script's own annotate() on one peer-format row, with a stub openai."""
    sent = []

    class ChatCompletion:
        @staticmethod
        def create(model, messages, **kwargs):
            sent.append({"model": model, "messages": messages, **kwargs})
            return {"choices": [{"message": {"content": "{'score': 1, 'pred': 'yes'}"}}]}

    stub = types.ModuleType("openai")
    stub.ChatCompletion = ChatCompletion
    saved = sys.modules.get("openai")
    sys.modules["openai"] = stub
    try:
        spec = importlib.util.spec_from_file_location(f"standin_{criterion}", folder / SCRIPTS[criterion])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        reads = CO_READS if criterion == "co" else QA_READS
        qa_set = {inner: row[field] for inner, field in reads.values()}
        tmp.mkdir(parents=True, exist_ok=True)
        module.annotate({"k": qa_set}, ["k.json"], str(tmp))
    finally:
        if saved is None:
            sys.modules.pop("openai", None)
        else:
            sys.modules["openai"] = saved
    (request,) = sent
    return request
