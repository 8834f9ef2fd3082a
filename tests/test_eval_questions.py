"""Evaluation questions: every public format reads to the same rows; joins are by id; bad rows are one line."""

import json

import pytest

from redvillm.errors import UserError
from redvillm.evaluate.questions import Question, read_questions, resolve_video_id


def write_json(path, data, **kwargs):
    path.write_text(json.dumps(data, ensure_ascii=False, **kwargs), encoding="utf-8")
    return path


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def one_line_error(match, call, *args, **kwargs):
    with pytest.raises(UserError, match=match) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# ActivityNet-QA: names without the v_ prefix its video files carry.
ANET_Q = [
    {"video_name": "abc", "question_id": "v_abc_0", "question": "is the man running"},
    {"video_name": "abc", "question_id": "v_abc_1", "question": "what color is the shirt"},
    {"video_name": "xyz", "question_id": "v_xyz_0", "question": "how many dogs are there"},
]
ANET_A = [  # reordered: joining by position would give every question the wrong answer
    {"answer": "2", "type": 7, "question_id": "v_xyz_0"},
    {"answer": "yes", "type": 3, "question_id": "v_abc_0"},
    {"answer": "red", "type": 4, "question_id": "v_abc_1"},
]


@pytest.fixture
def anet(tmp_path):
    return write_json(tmp_path / "test_q.json", ANET_Q, indent=1), write_json(tmp_path / "test_a.json", ANET_A)


# --- ActivityNet-QA ------------------------------------------------------------------------

def test_activitynet_joins_on_question_id_not_position(anet):
    questions, answers = anet
    qs = read_questions(questions, answers)
    assert qs.questions == [
        Question("v_abc_0", "abc", "is the man running", "yes", "qa", "yes_no", None, 0),
        Question("v_abc_1", "abc", "what color is the shirt", "red", "qa", "color", None, 1),
        Question("v_xyz_0", "xyz", "how many dogs are there", "2", "qa", "number", None, 2),
    ]
    assert qs.missing_video == [] and qs.unmatched == [] and qs.answers_path == answers


def test_activitynet_answers_found_beside_test_q(anet):
    questions, answers = anet
    qs = read_questions(questions)
    assert qs.answers_path == answers and [q.answer for q in qs.questions] == ["yes", "red", "2"]


def test_answers_beside_found_for_any_x_q_name_and_jsonl(tmp_path):
    questions = write_json(tmp_path / "val_q.json", ANET_Q)
    write_jsonl(tmp_path / "val_a.jsonl", ANET_A)
    assert [q.answer for q in read_questions(questions).questions] == ["yes", "red", "2"]


def test_questions_without_any_answers_file_have_answer_none(tmp_path):
    qs = read_questions(write_json(tmp_path / "test_q.json", ANET_Q))
    assert qs.answers_path is None and [q.answer for q in qs.questions] == [None, None, None]
    assert [q.question_id for q in qs.questions] == ["v_abc_0", "v_abc_1", "v_xyz_0"]


@pytest.mark.parametrize("code, name", [(0, "motion"), (1, "spatial"), (2, "temporal"), (3, "yes_no"),
                                        (4, "color"), (5, "object"), (6, "location"), (7, "number"),
                                        (8, "other"), ("5", "object"), ("yes_no", "yes_no"), ("Yes/No", "yes_no")])
def test_every_activitynet_type_code_has_its_name(tmp_path, code, name):
    q = write_json(tmp_path / "test_q.json", ANET_Q[:1])
    a = write_json(tmp_path / "test_a.json", [{"answer": "yes", "type": code, "question_id": "v_abc_0"}])
    assert read_questions(q, a).questions[0].qtype == name


def test_answer_without_type_has_no_qtype(tmp_path):
    q = write_json(tmp_path / "q.json", ANET_Q[:1])
    a = write_json(tmp_path / "a.json", [{"answer": "yes", "question_id": "v_abc_0"}])
    assert read_questions(q, a).questions[0].qtype is None


@pytest.mark.parametrize("code", [9, -1, "color-ish", None, 2.5, True])
def test_unknown_type_code_names_answers_file_and_row(anet, code):
    questions, answers = anet
    write_json(answers, ANET_A[:1] + [{"answer": "yes", "type": code, "question_id": "v_abc_0"}], indent=1)
    message = one_line_error("type", read_questions, questions, answers)
    assert message.startswith(f"{answers}: row 1 (line 7): ") and "0-8" in message


def test_question_without_answer_and_answer_without_question_are_listed_and_skipped(anet):
    questions, answers = anet
    write_json(answers, ANET_A[1:] + [{"answer": "no", "type": 3, "question_id": "v_gone_9"}])
    qs = read_questions(questions, answers)
    assert [q.question_id for q in qs.questions] == ["v_abc_0", "v_abc_1"]
    assert len(qs.unmatched) == 2
    assert qs.unmatched[0].startswith(f"{questions}: row 2 (line 12): question_id v_xyz_0 has no answer")
    assert qs.unmatched[1].startswith(f"{answers}: row 2") and "v_gone_9 has no question" in qs.unmatched[1]


def test_answers_file_that_matches_nothing_is_refused(anet, tmp_path):
    questions, _ = anet
    other = write_json(tmp_path / "other_a.json", [{"answer": "x", "question_id": "nope"}])
    one_line_error("none of its 1 question ids matches one of the 3 questions", read_questions, questions, other)


def test_integer_question_ids_join_with_text_ones(tmp_path):
    q = write_json(tmp_path / "q.json", [{"video_name": "abc", "question_id": 17, "question": "q?"}])
    a = write_json(tmp_path / "a.json", [{"answer": "yes", "question_id": "17"}])
    assert read_questions(q, a).questions[0].question_id == "17"


def test_passing_the_answers_file_as_questions_is_refused(anet):
    _, answers = anet
    one_line_error("looks like an answers file", read_questions, answers)


def test_answers_file_for_rows_that_already_have_answers_is_refused(anet, tmp_path):
    _, answers = anet
    qa = write_json(tmp_path / "msvd.json", [{"video_name": "a", "question": "q?", "answer": "x"}])
    one_line_error("already carry answers", read_questions, qa, answers)


def test_joining_needs_a_question_id_in_every_question_row(anet):
    questions, answers = anet
    write_json(questions, ANET_Q[:2] + [{"video_name": "xyz", "question": "how many dogs"}], indent=1)
    message = one_line_error("question id", read_questions, questions, answers)
    assert message.startswith(f"{questions}: row 2 (line 12): missing question id")


@pytest.mark.parametrize("which", ["q", "a"])
def test_repeated_question_id_is_refused(anet, which):
    questions, answers = anet
    if which == "q":
        write_json(questions, ANET_Q + [ANET_Q[0]])
    else:
        write_json(answers, ANET_A + [ANET_A[0]])
    one_line_error("v_xyz_0 repeats|v_abc_0 repeats", read_questions, questions, answers)


# --- video names -------------------------------------------------------------------------

def test_resolve_video_id_candidates():
    assert resolve_video_id("abc", {"v_abc"}) == "v_abc"          # ActivityNet name -> file
    assert resolve_video_id("v_abc", {"abc"}) == "abc"            # the other way round
    assert resolve_video_id("v_abc", {"abc", "v_abc"}) == "v_abc"  # exact wins
    assert resolve_video_id("abc", {"abc", "v_abc"}) == "abc"
    assert resolve_video_id("abc.mp4", {"v_abc"}) == "v_abc"      # stem of a file name
    assert resolve_video_id("7010", {"video7010"}) == "video7010"  # MSRVTT-QA integer ids
    assert resolve_video_id("v_abcdefghijk", {"v_v_abcdefghijk"}) == "v_v_abcdefghijk"  # id that starts with v_
    assert resolve_video_id("abc", {"abcd", "xabc"}) is None


def test_activitynet_names_resolve_to_cached_v_prefixed_ids(anet):
    questions, answers = anet
    qs = read_questions(questions, answers, video_ids={"v_abc", "v_xyz"})
    assert [q.video_id for q in qs.questions] == ["v_abc", "v_abc", "v_xyz"] and qs.missing_video == []


def test_prefixed_names_resolve_to_unprefixed_cache_ids(tmp_path):
    rows = [{"video_name": "v_abc", "question": "q?", "answer": "a"}]
    qs = read_questions(write_json(tmp_path / "qa.json", rows), video_ids={"abc"})
    assert qs.questions[0].video_id == "abc"


def test_missing_videos_are_returned_separately_not_raised(anet):
    questions, answers = anet
    qs = read_questions(questions, answers, video_ids={"v_xyz", "unrelated"})
    assert [q.question_id for q in qs.questions] == ["v_xyz_0"]
    assert [q.question_id for q in qs.missing_video] == ["v_abc_0", "v_abc_1"]
    assert qs.missing_video[0].video_id == "abc" and qs.missing_video_ids == ["abc"]
    assert read_questions(questions, answers, video_ids=set()).questions == []


def test_question_ids_do_not_depend_on_the_cache(tmp_path):
    rows = [{"video_name": "abc", "question": "q?", "answer": "a"},
            {"video_name": "xyz", "question": "q?", "answer": "b"}]
    path = write_json(tmp_path / "qa.json", rows)
    ids = [[q.question_id for q in qs.questions + qs.missing_video]
           for qs in (read_questions(path), read_questions(path, video_ids={"v_abc"}), read_questions(path))]
    assert ids[0] == ["abc#0", "xyz#1"] and sorted(ids[1]) == ids[0] == ids[2]


@pytest.mark.parametrize("row, video_id", [
    ({"video_name": " v_abc.mp4 "}, "v_abc"),
    ({"video_id": "clips/v_abc.mkv"}, "v_abc"),
    ({"video": "some/dir/tumblr_xyz.gif"}, "tumblr_xyz"),
    ({"video": "clip.weird"}, "clip"),               # `video` is a file name: any extension goes
    ({"video_name": "clip.2024"}, "clip.2024"),      # other fields: only known extensions go
    ({"gif_name": "tumblr_xyz.gif"}, "tumblr_xyz"),
    ({"video_id": 7010}, "7010"),
    ({"video_name": "name_wins", "video_id": 3}, "name_wins"),
])
def test_video_field_variants(tmp_path, row, video_id):
    path = write_json(tmp_path / "qa.json", [{**row, "question": "q?", "answer": "a"}])
    assert read_questions(path).questions[0].video_id == video_id


# --- one-file QA (MSVD / MSRVTT / TGIF) ----------------------------------------------------

@pytest.mark.parametrize("row", [
    # Video-ChatGPT's copies, then MSVD/MSRVTT-QA's originals, then short names
    {"video_name": "vid1", "question": "what is a man doing?", "answer": "dance", "question_id": "q7"},
    {"video_id": "vid1", "question": "what is a man doing?", "answer": "dance", "id": "q7"},
    {"video": "vid1.mp4", "q": "what is a man doing?", "a": "dance", "qid": "q7", "extra": [1]},
])
def test_one_file_qa_field_variants_read_alike(tmp_path, row):
    [q] = read_questions(write_json(tmp_path / "msvd_qa.json", [row])).questions
    assert q == Question("q7", "vid1", "what is a man doing?", "dance", "qa", None, None, 0)


def test_one_file_qa_keeps_its_own_type_labels_and_numbers_as_text(tmp_path):
    rows = [{"video_name": "a", "question": "how many?", "answer": 3, "type": "Count"},
            {"video_name": "a", "question": "what?", "answer": "cat", "type": 0},  # TGIF's codes are not ActivityNet's
            {"video_name": "a", "question": "where?", "answer": "park", "qtype": "location"}]
    qs = read_questions(write_json(tmp_path / "tgif_frameqa.json", rows)).questions
    assert [(q.answer, q.qtype) for q in qs] == [("3", "count"), ("cat", "0"), ("park", "location")]


def test_one_file_qa_without_answers_has_answer_none(tmp_path):
    rows = [{"video_name": "a", "question": "what?"}, {"video_name": "b", "question": "who?"}]
    qs = read_questions(write_json(tmp_path / "questions.json", rows))
    assert [(q.question_id, q.answer) for q in qs.questions] == [("a#0", None), ("b#1", None)]


def test_wrapper_object_holding_the_rows(tmp_path):
    path = write_json(tmp_path / "qa.json", {"data": [{"video_name": "a", "question": "q?", "answer": "x"}]})
    assert read_questions(path).questions[0].answer == "x"


# --- Video-ChatGPT generative benchmark ------------------------------------------------------

GENERIC = [{"video_name": "v_abc", "Q": "What happens in the video?", "A": "A man runs."},
           {"video_name": "v_xyz", "Q": "Describe the scene.", "A": "A park."}]


@pytest.mark.parametrize("name, task", [("generic_qa.json", "generic"), ("temporal_qa.json", "temporal"),
                                        ("Temporal_QA_v2.json", "temporal"), ("benchmark.json", "generic")])
def test_generative_task_from_file_name(tmp_path, name, task):
    qs = read_questions(write_json(tmp_path / name, GENERIC)).questions
    assert [(q.task, q.question_id, q.answer) for q in qs] == [
        (task, "v_abc#0", "A man runs."), (task, "v_xyz#1", "A park.")]


def test_task_override(tmp_path):
    generic = write_json(tmp_path / "generic_qa.json", GENERIC)
    assert read_questions(generic, task="temporal").questions[0].task == "temporal"
    qa = write_json(tmp_path / "msvd.json", [{"video_name": "a", "question": "q?", "answer": "x"}])
    assert read_questions(qa).questions[0].task == "qa"
    assert read_questions(qa, task="generic").questions[0].task == "generic"
    one_line_error("unknown task 'judge'", read_questions, qa, task="judge")
    one_line_error("needs rows with Q1 and Q2", read_questions, qa, task="consistency")


def test_consistency_rows_give_two_questions_sharing_video_and_answer(tmp_path):
    rows = [{"video_name": "v_abc", "Q1": "What is the man doing?", "Q2": "Describe the man's action.",
             "A": "He runs."},
            {"video_name": "v_xyz", "Q1": "Where?", "Q2": "In which place?", "A": "A park."}]
    qs = read_questions(write_json(tmp_path / "consistency_qa.json", rows), video_ids={"v_abc", "v_xyz"})
    assert qs.questions[:2] == [
        Question("v_abc#0/q1", "v_abc", "What is the man doing?", "He runs.", "consistency", None, "q1", 0),
        Question("v_abc#0/q2", "v_abc", "Describe the man's action.", "He runs.", "consistency", None, "q2", 0),
    ]
    assert [q.question_id for q in qs.questions[2:]] == ["v_xyz#1/q1", "v_xyz#1/q2"]
    assert len({q.question_id for q in qs.questions}) == 4


def test_consistency_refuses_other_tasks_and_answer_files(tmp_path, anet):
    path = write_json(tmp_path / "consistency_qa.json", [{"video_name": "a", "Q1": "x?", "Q2": "y?", "A": "z"}])
    assert read_questions(path, task="consistency").questions[0].pair == "q1"
    one_line_error("not task 'generic'", read_questions, path, task="generic")
    one_line_error("drop the answers file", read_questions, path, anet[1])


def test_consistency_row_missing_its_second_question(tmp_path):
    rows = [{"video_name": "a", "Q1": "x?", "Q2": "y?", "A": "z"}, {"video_name": "b", "Q1": "x?", "A": "z"}]
    path = write_json(tmp_path / "consistency_qa.json", rows, indent=2)
    message = one_line_error("missing question 2", read_questions, path)
    assert message.startswith(f"{path}: row 1 (line 8): ")


# --- JSONL ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, name", [
    ([{"video_name": "a", "question": "q?", "answer": "x"}], "msvd.json"),  # JSONL content named .json
    (GENERIC, "temporal_qa.jsonl"),
    ([{"video_name": "a", "Q1": "x?", "Q2": "y?", "A": "z"}], "consistency_qa.jsonl"),
])
def test_jsonl_reads_like_json(tmp_path, rows, name):
    (tmp_path / "json").mkdir()
    from_json = read_questions(write_json(tmp_path / "json" / name, rows))
    from_jsonl = read_questions(write_jsonl(tmp_path / name, rows))
    assert from_jsonl.questions == from_json.questions


def test_activitynet_in_jsonl_and_rows_are_lines(tmp_path):
    q = tmp_path / "test_q.jsonl"
    q.write_text("\n".join(json.dumps(r) for r in ANET_Q[:1]) + "\n\n" + json.dumps(ANET_Q[2]) + "\n", encoding="utf-8")
    write_jsonl(tmp_path / "test_a.jsonl", ANET_A)
    qs = read_questions(q)
    assert [(q.question_id, q.row) for q in qs.questions] == [("v_abc_0", 0), ("v_xyz_0", 2)]
    assert qs.unmatched == [f"{tmp_path / 'test_a.jsonl'}: line 3: question_id v_abc_1 has no question in "
                            "test_q.jsonl; skipped"]


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"video_name": "a", "question": "q?", "answer": "x"}\n{"video_name": \n', encoding="utf-8")
    assert one_line_error("not valid JSON", read_questions, path).startswith(f"{path}: line 2: ")


# --- malformed input -------------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    ({"question": "q?", "answer": "x"}, 'missing video \\(one of "video_name", "video_id", "video", "gif_name"\\)'),
    ({"video_name": "a", "answer": "x"},
     'missing question \\(one of "question", "q", "Q"\\); this row has: answer, video_name'),
    ({"video_name": "a", "question": "  ", "answer": "x"}, 'empty "question"'),
    ({"video_name": "a", "question": 5, "answer": "x"}, '"question" \\(question\\) must be text, got a number'),
    ({"video_name": "a", "question": "q?"}, 'missing answer'),
    ({"video_name": "a", "question": "q?", "answer": ["x"]},
     '"answer" \\(answer\\) must be text or a number, got a list'),
    ({"video_name": None, "question": "q?", "answer": "x"},
     '"video_name" \\(video\\) must be text or a number, got null'),
    ({"video_name": ".mp4", "question": "q?", "answer": "x"}, "only a file extension"),
    (["a", "q?", "x"], "expected an object, got a list"),
])
def test_malformed_row_names_file_row_and_field(tmp_path, bad, match):
    rows = [{"video_name": "ok", "question": "q?", "answer": "x"}, bad]
    path = write_json(tmp_path / "msrvtt_qa.json", rows, indent=1)
    message = one_line_error(match, read_questions, path)
    assert message.startswith(f"{path}: row 1 (line 7): ")


def test_answer_in_some_rows_only_is_refused(tmp_path):
    rows = [{"video_name": "a", "question": "q?"}, {"video_name": "b", "question": "q?", "answer": "x"}]
    one_line_error("row 1 .*either every row carries its answer or none", read_questions,
                   write_json(tmp_path / "qa.json", rows))


def test_malformed_answer_row_names_the_answers_file(anet):
    questions, answers = anet
    write_json(answers, [{"type": 3, "question_id": "v_abc_0"}])
    message = one_line_error("missing answer", read_questions, questions, answers)
    assert message.startswith(f"{answers}: row 0 (line 1): ")


def test_repeated_given_ids_in_one_file_qa(tmp_path):
    rows = [{"video_name": "a", "question": "q?", "answer": "x", "id": 1},
            {"video_name": "b", "question": "r?", "answer": "y", "id": 1}]
    one_line_error("question id 1 repeats row 0", read_questions, write_json(tmp_path / "qa.json", rows))


@pytest.mark.parametrize("content, match", [
    ("", "the file is empty"), ("  \n", "the file is empty"), ("[]", "no questions in this file"),
    ('"text"', "the top level is a string"), ("[{", "not valid JSON"), (None, "no such file"),
])
def test_unreadable_files(tmp_path, content, match):
    path = tmp_path / "qa.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    one_line_error(match, read_questions, path)


def test_folder_and_non_utf8(tmp_path):
    one_line_error("is a folder", read_questions, tmp_path)
    path = tmp_path / "qa.json"
    path.write_bytes('[{"video_name": "a", "question": "什么是", "answer": "x"}]'.encode("gbk"))
    one_line_error("not UTF-8", read_questions, path)


# --- Chinese ---------------------------------------------------------------------------------

def test_chinese_text_survives(tmp_path):
    rows = [{"video_name": "v_视频", "question": "视频里的人在做什么？", "answer": "他在跑步。"},
            {"video_name": "v_视频", "question": "  颜色是什么\n红色还是蓝色？ ", "answer": "红色"}]
    path = tmp_path / "zh_qa.json"
    path.write_text("\ufeff" + json.dumps(rows, ensure_ascii=False), encoding="utf-8")  # with a BOM
    qs = read_questions(path, video_ids={"v_视频"}).questions
    assert [(q.video_id, q.question, q.answer) for q in qs] == [
        ("v_视频", "视频里的人在做什么？", "他在跑步。"),
        ("v_视频", "  颜色是什么\n红色还是蓝色？ ", "红色")]  # kept as written: the judge sees this text


def test_chinese_in_error_messages_stays_one_readable_line(tmp_path):
    path = write_json(tmp_path / "问题.json", [{"视频": "a", "问题": "什么?\n第二行"}])
    message = one_line_error("missing video", read_questions, path)
    assert "问题.json" in message and "视频" in message

