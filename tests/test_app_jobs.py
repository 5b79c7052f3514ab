"""app.jobs.Job, the one job runner every face uses: what a user sees of its outcome."""

from __future__ import annotations

import logging
import threading

from lora_forge.app.jobs import Job
from lora_forge.errors import ForgeError
from lora_forge.events import Progress


def test_a_job_streams_its_events_and_keeps_its_result():
    seen = []

    def work(job: Job) -> int:
        for i in range(3):
            job.emit(Progress(i + 1, 3, f"step {i + 1}"))
        return 42

    job = Job("count", work, on_event=seen.append).start()
    messages = [e.message for e in job.follow()]
    assert messages == ["step 1", "step 2", "step 3"] and [e.step for e in seen] == [1, 2, 3]
    assert job.wait(5).state == "finished" and job.result == 42 and job.message == "step 3"
    assert list(job.follow()) == []  # a second follower ends at once


def test_a_user_error_becomes_the_message_as_it_is():
    def work(job: Job) -> None:
        raise ForgeError("the dataset folder is empty")

    ended = []
    job = Job("tag", work, on_end=ended.append).start().wait(5)
    assert (job.state, job.error, job.message) == (
        "failed",
        "the dataset folder is empty",
        "the dataset folder is empty",
    )
    assert ended == [job]


def test_a_bug_is_logged_with_its_traceback_and_shown_in_one_line(caplog):
    def work(job: Job) -> None:
        {}["missing"]

    with caplog.at_level(logging.ERROR):
        job = Job("grid", work).start().wait(5)
    assert job.state == "failed" and "\n" not in job.error
    assert job.error.startswith("unexpected KeyError: 'missing'") and "console" in job.error
    assert any(r.exc_info and "grid failed" in r.getMessage() for r in caplog.records)


def test_stop_ends_the_work_at_its_next_check_and_a_refusal_while_stopping_reads_as_stopped():
    started = threading.Event()

    def work(job: Job) -> str:
        started.set()
        while not job.stop_flag.requested:
            job.stop_flag._event.wait(0.01)
        return "partial"

    job = Job("render", work).start()
    assert started.wait(5)
    job.stop()
    assert job.wait(5).state == "stopped" and job.result == "partial" and job.stop_flag.reason == "stopped by user"

    def loading(job: Job) -> None:
        job.stop()
        raise ForgeError("stopped while encoding the images")

    job = Job("train", loading).start().wait(5)
    assert (job.state, job.message, job.error) == ("stopped", "stopped while encoding the images", "")


def test_a_tagging_job_says_its_provider_streams_progress_and_refuses_a_missing_folder(tmp_path, wd14_model):
    from lora_forge.app import tagging
    from lora_forge.settings import Settings
    from lora_forge.tagger.batch import TagOptions
    from lora_forge.tagger.testing import BLUE, RED, solid_image

    data = tmp_path / "dataset"
    data.mkdir()
    solid_image(RED).save(data / "red.png")
    solid_image(BLUE).save(data / "blue.png")
    settings = Settings(models_dir=tmp_path / "models", dataset_dir=tmp_path)
    job = tagging.tag(settings, str(data), str(wd14_model.folder), TagOptions())
    events = list(job.follow())
    assert job.wait(30).state == "finished", job.error
    assert events[0].message == "Loading the model …" and events[-1].total == 2
    assert job.info["provider"] and job.result.count("written") == 2 and (data / "red.txt").is_file()

    job = tagging.tag(settings, "  ", str(wd14_model.folder), TagOptions()).wait(30)
    assert job.state == "failed" and job.error.startswith("set the dataset folder at the top first")
    job = tagging.tag(settings, str(data), "no-such-model", TagOptions()).wait(30)
    assert job.state == "failed" and "unknown tagger model 'no-such-model'" in job.error
