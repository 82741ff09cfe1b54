"""`python -m unclip_jax.bench profile`: the HLO classifier and the trace arithmetic on hand-made inputs, and the
CLI on the tiny decoder's train step and a tiny pipeline's sampling (wiring only; nothing is timed)."""

from __future__ import annotations

import json

import pytest

from unclip_jax.bench import profile
from unclip_jax.errors import UserError

HLO = """HloModule jit_step, entry_computation_layout={()->f32[]}

%fused_conv (param_0: f32[4,8,8,16], param_1: f32[3,3,16,32]) -> f32[4,8,8,32] {
  %param_0 = f32[4,8,8,16]{3,2,1,0} parameter(0)
  %param_1 = f32[3,3,16,32]{3,2,1,0} parameter(1)
  ROOT %convolution.1 = f32[4,8,8,32]{3,2,1,0} convolution(%param_0, %param_1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}

%fused_wgrad (param_0: f32[16,8,8,4], param_1: f32[4,8,8,32]) -> f32[16,3,3,32] {
  %param_0 = f32[16,8,8,4]{3,2,1,0} parameter(0)
  %param_1 = f32[4,8,8,32]{3,2,1,0} parameter(1)
  ROOT %convolution.2 = f32[16,3,3,32]{3,2,1,0} convolution(%param_0, %param_1), window={size=8x8 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}

%outer (p: f32[4,8,8,16], q: f32[3,3,16,32]) -> f32[4,8,8,32] {
  %p = f32[4,8,8,16]{3,2,1,0} parameter(0)
  %q = f32[3,3,16,32]{3,2,1,0} parameter(1)
  ROOT %inner = f32[4,8,8,32]{3,2,1,0} fusion(%p, %q), kind=kCustom, calls=%fused_conv
}

%fused_dot (a: f32[8,16], b: f32[16,4]) -> f32[8,4] {
  %a = f32[8,16]{1,0} parameter(0)
  %b = f32[16,4]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,4]{1,0} dot(%a, %b), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (x: f32[4,8,8,16], w: f32[3,3,16,32]) -> (f32[4,8,8,32], f32[]) {
  %x = f32[4,8,8,16]{3,2,1,0} parameter(0)
  %w = f32[3,3,16,32]{3,2,1,0} parameter(1)
  %conv_fusion.1 = f32[4,8,8,32]{3,2,1,0} fusion(%x, %w), kind=kCustom, calls=%outer
  %wgrad_fusion = f32[16,3,3,32]{3,2,1,0} fusion(%x, %x), kind=kCustom, calls=%fused_wgrad
  %dot_fusion = f32[8,4]{1,0} fusion(%x, %x), kind=kOutput, calls=%fused_dot
  %transpose.3 = f32[32,3,3,16]{3,2,1,0} transpose(%w), dimensions={3,0,1,2}
  %all-reduce.7 = (f32[8,4]{1,0}, f32[]) all-reduce(%dot_fusion, %x), channel_id=1, to_apply=%add
  ROOT %add_fusion = f32[] fusion(%x), kind=kLoop, calls=%fused_add
}
"""


def test_hlo_ops_are_sorted_into_kinds():
  kinds = profile.classify_hlo(HLO)
  assert kinds["conv_fusion.1"] == "convolution"  # through a fusion nested in a fusion
  assert kinds["wgrad_fusion"] == "convolution: weights"  # its 8x8 window covers the 3x3 output
  assert kinds["dot_fusion"] == "matmul"
  assert kinds["transpose.3"] == "layout copies"
  assert kinds["all-reduce.7"] == "collectives"  # a tuple-shaped result
  assert kinds["add_fusion"] == "elementwise/reductions"


def test_breakdown_counts_innermost_ops_and_moves_rendezvous_to_waiting():
  kinds = {"while.1": "elementwise/reductions", "conv": "convolution", "ar": "collectives"}
  ev = lambda name, ts, dur, tid=1: {"name": name, "ts": ts, "dur": dur, "tid": tid, "ph": "X"}  # noqa: E731
  events = [ev("while.1", 0, 6500), ev("conv", 500, 2000), ev("conv", 3000, 2000),  # a loop: its body counts
            ev("ar", 7000, 4000), ev("Rendezvous", 7500, 3000),
            ev("conv", 0, 2000, tid=2), ev("Rendezvous", 5000, 1000, tid=2)]  # a rendezvous outside a collective
  out = profile.breakdown(events, kinds, steps=2)
  ms = {r["kind"]: r["ms_per_step"] for r in out["kinds"]}
  assert ms["convolution"] == pytest.approx(3.0) and ms["elementwise/reductions"] == 0.0
  assert ms["collectives"] == pytest.approx(0.5) and ms["waiting"] == pytest.approx(1.5)
  assert out["thread_ms_per_step"] == pytest.approx(5.0)
  assert sum(r["share"] for r in out["kinds"]) == pytest.approx(1.0)
  assert out["top_ops"][0] == {"op": "conv", "kind": "convolution", "ms_per_step": 3.0}


def test_idle_counts_the_gaps_between_a_busy_threads_ops_only():
  kinds = {"a": "matmul", "b": "elementwise/reductions", "seed": "elementwise/reductions"}
  ev = lambda name, ts, dur, tid: {"name": name, "ts": ts, "dur": dur, "tid": tid, "ph": "X"}  # noqa: E731
  events = [ev("a", 0, 1000, 1), ev("b", 200, 300, 1), ev("a", 1500, 500, 1), ev("b", 2000, 1000, 1),
            ev("a", 2500, 100, 1),  # 500 idle
            ev("a", 0, 500, 2), ev("b", 1500, 1500, 2), ev("a", 100, 100, 2),  # nested; 1000 idle
            ev("seed", 0, 10, 3), ev("seed", 9000, 10, 3),  # a host thread's few ops: not a device thread
            ev("Rendezvous", 500, 900, 2)]  # not an op: a thread waiting in it is idle here
  out = profile.idle_between_ops(events, kinds, steps=1)
  assert out["threads"] == 2
  assert out["span_ms_per_step"] == pytest.approx(6.0) and out["idle_ms_per_step"] == pytest.approx(1.5)
  assert out["share"] == pytest.approx(0.25)
  assert profile.idle_between_ops([], kinds, steps=1)["share"] == 0.0


GPU_HLO = """HloModule jit_program, entry_computation_layout={()->f32[]}

%fused_convert (p: f32[3,3,64,64]) -> bf16[3,3,64,64] {
  %p = f32[3,3,64,64]{3,2,1,0} parameter(0)
  ROOT %c = bf16[3,3,64,64]{3,2,1,0} convert(%p)
}

ENTRY %main (x: bf16[8,32,32,64], w: f32[3,3,64,64], a: bf16[64,64]) -> f32[] {
  %x = bf16[8,32,32,64]{3,2,1,0} parameter(0)
  %w = f32[3,3,64,64]{3,2,1,0} parameter(1)
  %a = bf16[64,64]{1,0} parameter(2)
  %loop_convert_fusion.250 = bf16[3,3,64,64]{3,2,1,0} fusion(%w), kind=kLoop, calls=%fused_convert
  %cudnn-conv-bias-activation.7 = (bf16[8,32,32,64]{3,2,1,0}, u8[131]{0}) custom-call(%x, %loop_convert_fusion.250), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBiasActivationForward"
  %cudnn-conv-bw-filter.2 = (bf16[64,3,3,64]{3,2,1,0}, u8[0]{0}) custom-call(%x, %x), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"
  %custom-call.628 = (bf16[64,64]{0,1}, s8[1024]{0}) custom-call(%a, %a), custom_call_target="__cublas$lt$matmul"
  ROOT %r = f32[] constant(0)
}
"""


def test_a_gpu_traces_kernels_are_named_by_their_ops_and_counted_without_host_launches():
  """The shapes of an H200 trace of the Karlo pipeline: plain ops' kernels name their op (`hlo_op`), a CUDA
  graph's kernels name the graph and are known by their own names (a fusion's, or a library's)."""
  kinds = profile.classify_hlo(GPU_HLO)
  assert kinds["cudnn-conv-bias-activation.7"] == "convolution"
  assert kinds["cudnn-conv-bw-filter.2"] == "convolution: weights"
  assert kinds["custom-call.628"] == "matmul"
  assert kinds["loop_convert_fusion.250"] == "elementwise/reductions"

  def kernel(name, op, ts, dur):
    return {"ph": "X", "pid": 1, "tid": 14, "name": name, "ts": ts, "dur": dur,
            "args": {"hlo_op": op, "kernel_details": "regs:21 grid:462,1,1"}}
  events = [kernel("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32", "cudnn-conv-bias-activation.7", 0, 3000),
            kernel("loop_convert_fusion_250", "command_buffer_1", 2999, 501),  # starts 1 us before the last ends
            kernel("nvjet_sm90_tst_128x224_64x4_2x1_v_bz_coopA_NNT", "command_buffer_1", 3500, 1000),
            kernel("sm90_xmma_wgrad_implicit_gemm_bf16", "command_buffer_1", 4500, 2000),
            kernel("xmma_fprop_implicit_gemm_bf16", "custom-call.628", 7500, 500),  # a plain op: its op wins
            {"ph": "X", "pid": 1, "tid": 15, "name": "MemcpyD2H", "ts": 8000, "dur": 100,
             "args": {"hlo_op": "command_buffer_2", "memcpy_details": "size:4"}},
            # the host's launch of the same ops: not device time
            {"ph": "X", "pid": 701, "tid": 9, "name": "cudnn-conv-bias-activation.7", "ts": 0, "dur": 50000,
             "args": {"hlo_op": "cudnn-conv-bias-activation.7"}}]
  named, kinds = profile.device_events(events, kinds)
  assert [e["name"] for e in named] == ["cudnn-conv-bias-activation.7", "loop_convert_fusion.250",
                                        "nvjet_sm90_tst_128x224_64x4_2x1_v_bz_coopA_NNT",
                                        "sm90_xmma_wgrad_implicit_gemm_bf16", "custom-call.628", "MemcpyD2H"]
  out = profile.breakdown(named, kinds, steps=1, nested=False)
  ms = {r["kind"]: r["ms_per_step"] for r in out["kinds"]}
  assert ms["convolution"] == pytest.approx(3.0) and ms["convolution: weights"] == pytest.approx(2.0)
  assert ms["matmul"] == pytest.approx(1.5) and ms["elementwise/reductions"] == pytest.approx(0.501)
  assert ms["layout copies"] == pytest.approx(0.1)
  idle = profile.idle_between_ops(named, kinds, steps=1)
  assert idle["threads"] == 1 and idle["idle_ms_per_step"] == pytest.approx(1.0)  # 6500 to 7500 on stream 14
  cpu = [e for e in events if "kernel_details" not in e["args"] and "memcpy_details" not in e["args"]]
  assert profile.device_events(cpu, kinds)[0] is cpu  # a CPU's trace is read as it is


def test_profile_cli_on_the_tiny_decoder(tmp_path, capsys):
  out = tmp_path / "profile.json"
  assert profile.main(["--preset", "tiny", "--stage", "decoder", "--steps", "1", "--batch", "8", "--top", "3",
                       "--json", str(out)]) == 0
  report = json.loads(out.read_text())
  ms = {r["kind"]: r["ms_per_step"] for r in report["kinds"]}
  assert set(ms) == set(profile.KINDS)
  assert ms["convolution"] > 0 and ms["convolution: weights"] > 0 and ms["elementwise/reductions"] > 0
  assert len(report["top_ops"]) == 3 and report["wall_ms_per_step"] > 0
  assert report["idle"]["threads"] >= 1 and 0 <= report["idle"]["share"] < 1
  assert "convolution: weights" in capsys.readouterr().out
  with pytest.raises(UserError, match="--steps"):
    profile.main(["--steps", "0"])


def test_profile_cli_on_a_sampling_call(pipe_dir, tmp_path):
  out = tmp_path / "sample.json"
  assert profile.main(["--program", "sample", "--checkpoint", str(pipe_dir), "--batch", "2", "--steps", "1",
                       "--json", str(out)]) == 0
  report = json.loads(out.read_text())
  ms = {r["kind"]: r["ms_per_step"] for r in report["kinds"]}
  assert report["program"] == "sample" and report["wall_ms_per_call"] > 0
  assert ms["convolution"] > 0 and ms["convolution: weights"] == 0.0  # sampling computes no gradients
  assert not any(r["op"].startswith("while") for r in report["top_ops"])  # the scans' bodies are counted


def test_profile_sampling_on_random_weights_of_a_preset(tmp_path):
  out = tmp_path / "random.json"
  assert profile.main(["--program", "sample", "--random", "tiny", "--batch", "2", "--steps", "1", "--top", "2",
                       "--json", str(out)]) == 0
  report = json.loads(out.read_text())
  assert report["checkpoint"] == "random:tiny" and report["settings"]["decoder"]["steps"] == "4"
  assert {r["kind"]: r["ms_per_step"] for r in report["kinds"]}["convolution"] > 0
  with pytest.raises(UserError, match="--random"):
    profile.main(["--program", "sample", "--random", "tiny", "--checkpoint", str(tmp_path)])
  with pytest.raises(UserError, match="--random"):
    profile.main(["--random", "karlo"])
