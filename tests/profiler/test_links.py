"""`python -m profiler links`: group layouts (pure) and one real multi-process sweep on forked gloo ranks.

(The torchrun path differs only in who initialises the process group; the runtime's torchrun smoke test
covers torchrun itself, and a torchrun run costs ~10 s of start-up on this machine.)"""

from __future__ import annotations

from planner.profile import Profile
from profiler.cli import main
from profiler.links import LinkSweep, group_layouts


def test_group_layouts_one_node():
    got = {(lvl, g): groups for lvl, g, groups in group_layouts(4, 4)}
    assert got == {("intra_node", 2): [[0, 1], [2, 3]], ("intra_node", 4): [[0, 1, 2, 3]]}


def test_group_layouts_two_nodes_cover_every_rank_once_per_layout():
    for lvl, g, groups in group_layouts(8, 4):
        flat = sorted(r for grp in groups for r in grp)
        assert flat == list(range(8)) and all(len(grp) == g for grp in groups)
        if lvl == "inter_node":  # one rank per node, same local rank
            assert all(len({r // 4 for r in grp}) == g and len({r % 4 for r in grp}) == 1 for grp in groups)
        else:
            assert all(len({r // 4 for r in grp}) == 1 for grp in groups)
    assert [(l, g) for l, g, _ in group_layouts(8, 4)] == [("intra_node", 2), ("intra_node", 4), ("inter_node", 2)]


def test_group_layouts_non_power_of_two():
    assert [g for _, g, _ in group_layouts(3, 3)] == [2, 3]
    assert group_layouts(3, 3)[0][2] == [[0, 1]]  # the third rank idles while pairs measure


def test_sweep_sizes():
    assert LinkSweep(min_bytes=1024, max_bytes=16384, factor=4).sizes() == [1024, 4096, 16384]


def test_links_on_two_local_ranks_writes_fitted_profile(tmp_path, capsys):
    out = tmp_path / "links.json"
    rc = main(["links", "--nproc", "2", "--out", str(out), "--min-bytes", "4KiB", "--max-bytes", "256KiB",
               "--factor", "8", "--repeats", "3", "--warmup", "1"])
    assert rc == 0
    p = Profile.load(out)
    assert p.header.backend == "gloo" and p.header.world_size == 2
    ops = {(s.op, s.group_size, s.link_level) for s in p.collectives}
    assert ops == {(op, 2, "intra_node") for op in
                   ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")}
    assert len(p.collectives) == 5 * 3 * 3  # ops x sizes (4K, 32K, 256K) x repeats
    for fit in p.fits.values():
        assert fit.alpha_s >= 0 and fit.beta_s_per_byte >= 0
    assert p.collective_time_s("all_reduce", 2, "intra_node", 64 * 1024) > 0
    assert capsys.readouterr().out.count("alpha_us") == 1  # one summary, from rank 0
    # the runtime's compressed syncs, timed end to end over the two ranks (profiler/grad_sync.py)
    for method in ("fp16", "bf16", "int8", "topk", "powersgd"):
        assert p.grad_sync_s_per_element(method, 2) > 0
    assert p.grad_sync_s_per_element("topk", 4) is None


def test_links_refuses_bad_requests(tmp_path, capsys):
    assert main(["links", "--nproc", "1", "--out", str(tmp_path / "x")]) == 2
    assert main(["links", "--nproc", "2", "--ops", "broadcast", "--out", str(tmp_path / "x")]) == 2
    assert "unknown collective 'broadcast'" in capsys.readouterr().err
