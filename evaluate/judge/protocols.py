"""What the judge is sent: the fields of one prediction row and redvillm's own prompts.

Two protocols build the messages (both one system + one user message per request):
- ``redvillm`` (the default, this module): our own wording, the reply format stated in the
  system message, and a re-ask that says the previous reply could not be read;
- ``videochatgpt`` (``official.py``): the messages Video-ChatGPT's own scoring scripts build,
  read from the user's copy of those scripts.
Neither alters the row's text: questions, answers and predictions are sent as they are in
the predictions file (no stripping), so the judge sees what the model was asked and said.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from redvillm.errors import UserError

Criterion = Literal["qa", "ci", "do", "cu", "tu", "co"]
CRITERIA: tuple[str, ...] = ("qa", "ci", "do", "cu", "tu", "co")
Message = dict[str, str]

_QA_SYSTEM = (
    "You check answers to questions about videos. You are given a question, the correct "
    "answer and a predicted answer. Decide whether the prediction means the same as the "
    "correct answer: synonyms and paraphrases count as a match, a different or contradicting "
    "answer does not. Then rate how well the prediction answers the question from 0 (wrong) "
    "to 5 (fully correct). Reply with a Python dictionary and nothing else, exactly in this "
    'form: {"pred": "yes", "score": 4}. "pred" is "yes" or "no"; "score" is a number from 0 to 5.'
)
_SCORE_SYSTEM = (
    "You grade what a video assistant said about a video you cannot see. You are given {given}. "
    "Grade one criterion only: {criterion} Give a score from 0 (worst) to 5 (best). Reply with "
    'a Python dictionary and nothing else, exactly in this form: {{"score": 3}}.'
)
_GIVEN = "the question, a reference answer written by someone who watched the video, and the assistant's answer"
_GIVEN_CO = ("two differently worded questions that have the same answer, a reference answer "
             "written by someone who watched the video, and the assistant's answer to each question")
_CRITERION_TEXT = {
    "ci": "correctness of information. Does the answer agree with the reference? Penalise facts "
          "that contradict the reference or that it does not support (invented objects, actions, "
          "numbers). The same facts in other words are correct.",
    "do": "detail orientation. Is the answer complete and specific? Reward answers that cover the "
          "reference's points and name concrete objects, actions and attributes; penalise generic "
          "statements and important points left out.",
    "cu": "contextual understanding. Does the answer fit the overall context of the video as the "
          "reference describes it? Penalise answers that sound plausible but miss or misread what "
          "the video is about.",
    "tu": "temporal understanding. Does the answer get the order and timing of events right? "
          "Compare its sequence of events with the reference; penalise swapped, missing or "
          "invented steps.",
    "co": "consistency. Are the two answers consistent with each other and with the reference? "
          "Penalise answers that contradict each other or the reference.",
}
_FORMAT_EXAMPLE = {"qa": '{"pred": "yes", "score": 4}'}
_REASK = ("\n\n(Attempt {n}: the previous reply could not be read. Reply with the dictionary "
          "only, for example {example}.)")


def build_messages(criterion: str, fields: Mapping[str, Any], attempt: int = 0) -> list[Message]:
    """redvillm's system + user messages for one item (``fields`` as returned by ``item_fields``)."""
    check_criterion(criterion)
    f = {k: str(v) for k, v in fields.items()}
    if criterion == "qa":
        system = _QA_SYSTEM
        user = f"Question: {f['question']}\nCorrect answer: {f['answer']}\nPredicted answer: {f['pred']}"
    elif criterion == "co":
        system = _SCORE_SYSTEM.format(given=_GIVEN_CO, criterion=_CRITERION_TEXT["co"])
        user = (f"Question 1: {f['question1']}\nQuestion 2: {f['question2']}\n"
                f"Reference answer: {f['answer']}\n"
                f"Answer to question 1: {f['pred1']}\nAnswer to question 2: {f['pred2']}")
    else:
        system = _SCORE_SYSTEM.format(given=_GIVEN, criterion=_CRITERION_TEXT[criterion])
        user = f"Question: {f['question']}\nReference answer: {f['answer']}\nAssistant's answer: {f['pred']}"
    if attempt:
        user += _REASK.format(n=attempt + 1, example=_FORMAT_EXAMPLE.get(criterion, '{"score": 3}'))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


class RedvillmProtocol:
    """redvillm's own prompts (the default)."""

    name = "redvillm"

    def messages(self, criterion: str, fields: Mapping[str, Any], attempt: int = 0) -> list[Message]:
        return build_messages(criterion, fields, attempt)

    def describe(self, criterion: str) -> dict:
        return {"name": self.name, "criterion": criterion}


def check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise UserError(f"unknown judge criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")


def first(item: Mapping[str, Any], *names: str) -> Any:
    return next((item[n] for n in names if item.get(n) is not None), None)


def item_fields(item: Mapping[str, Any], criterion: str, index: int) -> dict[str, Any] | None:
    """The prompt fields of one prediction row, values as in the row; None without a prediction.

    Our names and the peer's are both read: question / Q, answer / A, pred, question1 / Q1,
    question2 / Q2, pred1, pred2. A row without a reference answer (or question) is a
    UserError naming the row.
    """
    if not isinstance(item, Mapping):
        raise UserError(f"prediction row {index} is a {type(item).__name__}, not an object")
    qid = first(item, "question_id")
    where = f"prediction row {index}" + (f" (question_id {qid})" if qid is not None else "")
    answer = first(item, "answer", "A")
    if answer is None:
        raise UserError(f"{where} has no reference answer: expected an 'answer' (or 'A') field")
    if criterion == "co":
        preds = first(item, "pred1"), first(item, "pred2")
        if None in preds:
            return None
        q1, q2 = first(item, "question1", "Q1"), first(item, "question2", "Q2")
        return {"question1": "(not given)" if q1 is None else q1, "question2": "(not given)" if q2 is None else q2,
                "answer": answer, "pred1": preds[0], "pred2": preds[1]}
    question, pred = first(item, "question", "Q"), first(item, "pred")
    if question is None:
        raise UserError(f"{where} has no question: expected a 'question' (or 'Q') field")
    if pred is None:
        return None
    return {"question": question, "answer": answer, "pred": pred}
