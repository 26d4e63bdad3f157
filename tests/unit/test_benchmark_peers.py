"""`benchmark.py --vs-llama`'s pure parts: the requests, skipping llama-server when it is not built, the greedy
text check, the report and its targets (no servers)."""

from __future__ import annotations

from pathlib import Path

from textgen_bench.benchmark.peers import (
    Case,
    GreedyCheck,
    PeerRun,
    PeersReport,
    abba,
    first_difference,
    request_body,
)
from textgen_bench.benchmark.peers_report import check_targets, format_report, plot_report
from textgen_bench.common.llama import llama_systems


def test_every_system_gets_the_same_request_and_llama_samples_from_the_same_distribution():
    ours = request_body("Hi", 64, "sampled", "ours")
    llama = request_body("Hi", 64, "sampled", "llama-f32")
    assert ours == {"prompt": "Hi", "max_tokens": 64, "ignore_eos": True, "temperature": 1.0, "top_p": 0.95}
    # llama-server's top_k 40 / min_p 0.05 defaults off, and no reuse of the (always identical) prompt's cache
    assert llama == {**ours, "top_k": 0, "min_p": 0.0, "cache_prompt": False}
    assert request_body("Hi", 64, "sampled", "llama-f32", llama_own=True) == {**ours, "cache_prompt": False}
    assert request_body("Hi", 8, "greedy", "llama-q8_0") == {
        **request_body("Hi", 8, "greedy", "ours"),
        "cache_prompt": False,
    }


def test_a_missing_binary_or_gguf_skips_the_system_and_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_CACHE", str(tmp_path))
    f32, q8 = llama_systems("distilgpt2-random:latest", ["f32", "q8_0"])
    assert f32.gguf == tmp_path / "gguf" / "distilgpt2-random-f32.gguf"
    assert "no llama-server" in f32.missing("distilgpt2-random:latest")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "llama-server").write_text("")
    reason = q8.missing("distilgpt2-random:latest")
    assert "no GGUF file" in reason and "scripts/build_llama_server.sh distilgpt2-random:latest" in reason
    (tmp_path / "gguf").mkdir()
    q8.gguf.write_text("")
    assert q8.missing("distilgpt2-random:latest") is None
    argv = q8.spec(port=9000, slots=5, context_per_slot=1024, threads=2).argv
    assert argv[argv.index("-np") + 1] == "5" and argv[argv.index("-c") + 1] == "5120" and "-t" in argv


def test_first_difference_points_at_the_first_differing_character():
    assert first_difference("abc", "abc") is None
    assert first_difference("abcd", "abXd") == 2
    assert first_difference("abc", "abcdef") == 3


def run(system: str, level: int, mode: str, tok_s: float) -> PeerRun:
    return PeerRun(
        system=system,
        case="short",
        concurrency=level,
        mode=mode,
        tokens_per_s=[tok_s * 0.9, tok_s, tok_s * 1.1],
        failed=0,
        prompt_tokens=30,
        health_p99_ms=12.0,
    )


def report() -> PeersReport:
    runs = []
    for level, ours, llama in ((1, 100.0, 110.0), (5, 400.0, 350.0), (32, 900.0, 300.0)):
        runs += [run("ours", level, "greedy", ours), run("ours", level, "sampled", ours * 0.9)]
        runs += [run("llama-f32", level, "greedy", llama), run("llama-f32", level, "sampled", llama * 0.6)]
    check = GreedyCheck(
        system="llama-f32", case="short", concurrency=5, equal=False, first_difference=7, ours="a", theirs="b"
    )
    return PeersReport(
        model_tag="m:1",
        cases=[Case(label="short", prompt="p", max_tokens=64, levels=[1, 5, 32])],
        systems=["ours", "llama-f32", "llama-f16"],
        skipped={"llama-f16": "no GGUF file"},
        checks=[check],
        runs=runs,
    )


def test_the_report_puts_systems_side_by_side_with_ratios_and_says_what_was_skipped():
    text = format_report(report())
    assert "| C | mode | ours | llama-f32 | ours / llama-f32 |" in text
    assert "| 5 | greedy | 400.0 | 350.0 | 1.14 |" in text  # medians, and their ratio
    assert "| 32 | sampled | 810.0 | 180.0 | 4.50 |" in text
    assert "skipped llama-f16: no GGUF file" in text
    assert "- llama-f32 (short; C=5): DIFFERS from ours from character 7 (C=5)" in text
    assert "ours C=1 0.90" in text  # what sampling costs


def test_the_targets_follow_the_issue_and_fail_when_missed(tmp_path: Path):
    verdicts = {t.name: t.verdict for t in check_targets(report())}
    assert verdicts["C=1 greedy: ours >= 0.8x llama-server f32"] == "PASS"  # 100 / 110 = 0.91
    assert verdicts["C=5 greedy: ours >= 1.0x llama-server f32"] == "PASS"
    assert verdicts["C=32: sampling costs ours at most 5%"] == "MISS"  # 10 %
    assert verdicts["llama-server f32 writes our greedy text"] == "MISS"
    plot_report(report(), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000


def test_what_sampling_costs_comes_from_each_repeats_adjacent_pair_not_from_drifting_medians():
    """The machine slowed by 30 % during the third repeat; each repeat's sampled run sat next to its greedy run."""
    drifting = report()
    for r in drifting.runs:
        if (r.system, r.concurrency) == ("ours", 32):
            r.tokens_per_s = [100.0, 100.0, 70.0] if r.mode == "greedy" else [96.0, 67.0, 67.0]
    verdicts = {t.name: (t.verdict, t.detail) for t in check_targets(drifting)}
    # Medians would say 67 / 100 (33 %); the pairs say 0.96, 0.67 and 0.957: 4.3 %.
    assert verdicts["C=32: sampling costs ours at most 5%"] == ("PASS", "4.3%")
    assert "ours C=1 0.90, C=5 0.90, C=32 0.96" in format_report(drifting)


def test_systems_and_modes_take_turns_in_abba_order():
    turns = [(system, mode) for r in range(4) for system in abba(["ours", "llama"], r) for mode in abba(["g", "s"], r)]
    assert turns[:8] == [
        ("ours", "g"), ("ours", "s"), ("llama", "g"), ("llama", "s"),
        ("llama", "s"), ("llama", "g"), ("ours", "s"), ("ours", "g"),
    ]  # fmt: skip
    assert turns[8:] == turns[:8]
