"""``edgehaze report --backbones``: backbone and fusion-mode costs beside the
paper's Table 1, counted on the meta device. Tiny sizes, tiny teacher."""
from __future__ import annotations

import json

import pytest
import torch

from edgehaze import build_dehazer
from edgehaze.cli import main
from edgehaze.errors import ConfigError
from edgehaze.models.cost_table import PAPER_TABLE1, cost_rows, format_cost_table, resolve_backbones
from edgehaze.models.report import model_report

torch.set_num_threads(1)
TINY = {"input_size": 28}
SIZE = (24, 40)


@pytest.fixture(scope="module")
def table() -> dict:
    return cost_rows(["coa", "edge-xs"], ("full", "input-channel", "selfpromer"), SIZE, depth="tiny", depth_kwargs=TINY)


def test_meta_counts_equal_a_real_forward_report(table):
    """The meta-device split is model_report's split of a real CPU forward."""
    for row in table["rows"]:
        for mode in table["modes"]:
            torch.manual_seed(0)
            model = build_dehazer(row["backbone"], depth="tiny", fusion=mode, depth_kwargs={**TINY, "random_init": True})
            real = model_report(model, *SIZE)
            assert (row["params"], row["flops"]) == (real["backbone"]["params"], real["backbone"]["flops"])
            got = row["modes"][mode]
            assert (got["params"], got["flops"]) == (real["fusion"]["params"], real["fusion"]["flops"]), (row, mode)
            # the teacher's attention: PyTorch's fused CPU SDPA kernel is not counted by flop_counter,
            # on meta it decomposes into counted matmuls (the complete count)
            assert table["depth_passes"][mode]["flops"] > real["depth"]["flops"]


def test_mode_costs_are_what_each_mode_builds(table):
    coa = next(r for r in table["rows"] if r["backbone"] == "coa")
    assert coa["params"] == 2_997_544
    # input-channel: one zero-initialised input channel of the 11x11 input conv (8 outputs, no bias)
    assert coa["modes"]["input-channel"]["params"] == 8 * 11 * 11
    assert coa["modes"]["full"]["points"] == 9 and coa["modes"]["selfpromer"]["points"] == 1
    # selfpromer's first, prompt-free pass is a whole backbone forward
    assert coa["modes"]["selfpromer"]["flops"] > coa["flops"]
    # a depth map for input-channel, two (hazy, clear estimate) for selfpromer
    passes = table["depth_passes"]
    assert passes["selfpromer"]["flops"] == 2 * passes["input-channel"]["flops"] > passes["full"]["flops"] > 0


def test_table_sits_beside_the_papers_column(table):
    text = format_cost_table(table)
    assert "| coa | 2.998 M |" in text and "| CoA | 3.75 M | 3.06 G |" in text
    assert "+1.22 M / +1.59 G | +1.09 M / +1.49 G |" in text  # CoA's +Ours and +SelfPromer
    edge = next(line for line in text.splitlines() if line.startswith("| edge-xs |"))
    assert edge.endswith("| | | |")  # not in the paper
    assert PAPER_TABLE1["sgdn"].params_m == 10.979 and PAPER_TABLE1["sgdn"].flops_g == 40.54
    assert "at 40x24" in text and "PromptHaze" in text


def test_cli_prints_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "costs.json"
    rc = main(["report", "--backbones", "coa-r", "--depth", "tiny", "--depth-input-size", "28", "--size", "16", "16",
               "--modes", "lite", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| coa-r | 1.686 M |" in text and "+ lite" in text
    saved = json.loads(out.read_text())
    assert [r["backbone"] for r in saved["rows"]] == ["coa-r"] and saved["modes"] == ["lite"]
    assert saved["depth_kwargs"] == {"random_init": True, "input_size": 28}


def test_bad_backbone_names_are_one_line_errors():
    assert "sgdn" in resolve_backbones("all") and resolve_backbones("coa, oknet") == ["coa", "oknet"]
    with pytest.raises(ConfigError, match=r"--backbones coa,nope: unknown backbone\(s\) \['nope'\]; known: all, coa"):
        resolve_backbones("coa,nope")



def test_weights_with_backbones_is_a_one_line_error(capsys):
    assert main(["report", "--backbones", "coa", "--depth-weights", "w.pth"]) == 2
    err = capsys.readouterr().err.strip()
    assert "without weights" in err and "drop --depth-weights" in err and "\n" not in err
