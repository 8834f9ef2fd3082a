"""Judge-free answer metrics on hand-checked cases."""

import pytest

from redvillm.evaluate.metrics import aggregate, contains, exact_match, normalize_answer, token_f1, tokens


@pytest.mark.parametrize("text, normalized", [
    ("Yes.", "yes"),
    ("  The   man,   is RUNNING!! ", "man is running"),
    ("A cat and an apple", "cat and apple"),
    ("Theatre", "theatre"),                     # articles only as whole words
    ("don't / can’t", "dont cant"),             # apostrophes vanish, other punctuation splits
    ("red/white-striped", "red white striped"),
    ("Two dogs", "2 dogs"),
    ("zero, twelve, TWENTY", "0 12 20"),
    ("twenty-one", "20 1"),                     # only the words zero..twenty are mapped
    ("thirty", "thirty"),
    ("3.5%", "3 5"),
    ("ＹＥＳ！１２", "yes 12"),                  # full-width forms (NFKC)
    ("红色的T恤。", "红色的t恤"),                 # CJK kept, its punctuation dropped
    ("他在 跑步 ！", "他在 跑步"),
    ("", ""), (None, ""), ("the", ""), ("?!", ""),
])
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_tokens_split_cjk_into_characters_and_keep_latin_words():
    assert tokens("红色T恤 and blue jeans") == ["红", "色", "t", "恤", "and", "blue", "jeans"]
    assert tokens("The dog's ball") == ["dogs", "ball"]


@pytest.mark.parametrize("pred, ref, expected", [
    ("Yes", "yes", True), ("yes.", "Yes", True), ("The cat", "cat", True), ("two", "2", True),
    ("2 ", "Two", True), ("a red car", "red car!", True), ("红色。", "红色", True), ("", "", True),
    ("Yes, it is.", "yes", False), ("red car", "car", False), ("", "no", False), (None, "no", False),
    ("21", "twenty one", False), ("红", "红色", False),
])
def test_exact_match(pred, ref, expected):
    assert exact_match(pred, ref) is expected


@pytest.mark.parametrize("pred, ref, expected", [
    ("Yes, the man is running.", "yes", True),
    ("No, he is sitting.", "no", True),
    ("Yes, there is no dog.", "yes", True),     # yes/no: the first yes or no decides
    ("Yes, there is no dog.", "no", False),
    ("I think not.", "no", False),
    ("The eyes are blue", "yes", False),        # whole words only
    ("The shirt is red.", "red", True),
    ("The shirt is reddish.", "red", False),
    ("He plays the guitar on stage", "play guitar", False),
    ("He is playing guitar.", "playing guitar", True),
    ("There are two dogs.", "2", True),
    ("There are 12 dogs.", "2", False),
    ("视频中的衬衫是红色的。", "红色", True),      # CJK: substring
    ("视频中的衬衫是红的。", "红色", False),
    ("A red T恤", "t恤", True),
    ("", "yes", False), (None, "red", False),
    ("", "the", True), ("anything", "the", False),  # a reference with no words matches only the empty prediction
])
def test_contains(pred, ref, expected):
    assert contains(pred, ref) is expected


@pytest.mark.parametrize("pred, ref, expected", [
    ("the cat sat", "cat", 2 * (1 / 2) * 1 / (1 / 2 + 1)),            # p=1/2 r=1 -> 2/3
    ("a man is running fast", "man running", 2 * (2 / 4) * 1 / (2 / 4 + 1)),  # 4 tokens, 2 common -> 2/3
    ("red red car", "red car car", 2 / 3),                          # multiset: common {red:1, car:1}
    ("blue", "red", 0.0),
    ("Two dogs", "2 dogs", 1.0),
    ("", "", 1.0), ("", "red", 0.0), ("red", "", 0.0), ("the", "an", 1.0),
    ("红色的车", "红色", 2 * (2 / 4) * 1 / (2 / 4 + 1)),                 # characters as tokens -> 2/3
    ("他在跑步", "她在走路", 2 * (1 / 4) * (1 / 4) / (1 / 4 + 1 / 4)),   # only 在 in common -> 1/4
])
def test_token_f1(pred, ref, expected):
    assert token_f1(pred, ref) == pytest.approx(expected)


def test_token_f1_is_symmetric_and_bounded():
    pairs = [("a man is running fast", "man running"), ("红色的车", "红色"), ("x y z", "y z w v")]
    for pred, ref in pairs:
        assert token_f1(pred, ref) == pytest.approx(token_f1(ref, pred))
        assert 0.0 <= token_f1(pred, ref) <= 1.0
    assert token_f1("x y z", "y z w v") == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))  # 4/7


def test_aggregate_overall_per_task_and_per_type_in_activitynet_order():
    records = [
        {"task": "qa", "qtype": "yes_no", "pred": "Yes, he is.", "answer": "yes"},   # em 0, contains 1, f1 1/2
        {"task": "qa", "qtype": "yes_no", "pred": "no", "answer": "no"},             # 1, 1, 1
        {"task": "qa", "qtype": "color", "pred": "blue", "answer": "red"},           # 0, 0, 0
        {"task": "qa", "qtype": "motion", "pred": "running", "answer": "running"},   # 1, 1, 1
        {"task": "qa", "qtype": "custom", "pred": "x", "answer": None},              # unscored
    ]
    result = aggregate(records)
    assert result["count"] == 4 and result["unscored"] == 1
    assert result["exact_match"] == pytest.approx(2 / 4)
    assert result["contains"] == pytest.approx(3 / 4)
    assert result["token_f1"] == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    assert list(result["per_qtype"]) == ["motion", "yes_no", "color"]  # code order; unscored "custom" absent
    assert result["per_qtype"]["yes_no"] == {"count": 2, "exact_match": 0.5, "contains": 1.0, "token_f1": 0.75}
    assert result["per_task"] == {"qa": {k: result[k] for k in ("count", "exact_match", "contains", "token_f1")}}


def test_aggregate_without_types_tasks_ordered_and_missing_predictions():
    records = [
        {"task": "temporal", "pred": "first he jumps then he runs", "answer": "He jumps, then runs."},
        {"task": "generic", "answer": "A park."},                    # no prediction: scores 0
        {"task": "generic", "pred": None, "answer": "A park."},
        {"task": "zz-custom", "pred": "ok", "answer": "ok"},
    ]
    result = aggregate(records)
    assert result["per_qtype"] == {}
    assert list(result["per_task"]) == ["generic", "temporal", "zz-custom"]
    assert result["per_task"]["generic"] == {"count": 2, "exact_match": 0.0, "contains": 0.0, "token_f1": 0.0}
    assert result["per_task"]["temporal"]["contains"] == 0.0 and result["per_task"]["zz-custom"]["exact_match"] == 1.0


def test_aggregate_of_nothing_has_no_means():
    assert aggregate([]) == {"count": 0, "exact_match": None, "contains": None, "token_f1": None,
                             "unscored": 0, "per_task": {}, "per_qtype": {}}
    assert aggregate([{"task": "qa", "pred": "x", "answer": None}])["unscored"] == 1
