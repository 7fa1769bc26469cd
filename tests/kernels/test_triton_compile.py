"""Ahead-of-time compilation of every Triton kernel for an NVIDIA sm_90 (H100) target, on CPU.

The interpreter tests check what the kernels compute; they do not go through Triton's compiler,
so code that the interpreter accepts but the compiler rejects (a non-constexpr global, a
loop-carried value changing type, an unsupported builtin) would only show up on a GPU. Here
``triton.compile`` lowers each kernel variant through TTIR, TTGIR, LLVM IR and PTX to a cubin
(Triton's bundled ``ptxas``), which needs no GPU or driver. It also checks that contiguous
16-byte-aligned rows give vectorised global loads (``ld.global.v4``), the bandwidth-critical
property of the element-wise neuron kernels.
"""
from __future__ import annotations

import re

import pytest

triton = pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from spikelm.kernels.adaptive_spike import fused as AS  # noqa: E402
from spikelm.kernels.lif import fused_recurrent as LIF  # noqa: E402
from spikelm.kernels.wkv4 import fused_recurrent as WKV  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
ALIGNED = [["tt.divisibility", 16]]


def compile_kernel(fn, signature: dict, constexprs: dict, aligned=(), num_warps=4):
    """Compile ``fn`` for sm_90; ``aligned`` names arguments specialised as multiples of 16."""
    names = list(signature)
    attrs = {(names.index(a),): ALIGNED for a in aligned}
    src = ASTSource(triton.jit(fn), signature, constexprs, attrs)
    try:
        return triton.compile(src, target=TARGET, options={"num_warps": num_warps, "enable_fp_fusion": True})
    except FileNotFoundError as e:  # no bundled ptxas in this triton build
        pytest.skip(f"ptxas unavailable: {e}")


def global_ops(kernel):
    return set(re.findall(r"\b(ld\.global[a-z.0-9]*|st\.global[a-z.0-9]*)", kernel.asm["ptx"]))


def lif_signatures(dt):
    fwd = {"x_ptr": f"*{dt}", "v0_ptr": "*fp32", "s_ptr": f"*{dt}", "h_ptr": "*fp32", "vT_ptr": "*fp32",
           "N": "i32", "T": "i32", "inv_tau": "fp32", "decay": "fp32", "v_th": "fp32", "v_reset": "fp32",
           "BLOCK": "constexpr", "CHUNK": "constexpr", "HARD": "constexpr", "DECAY_INPUT": "constexpr",
           "STORE_H": "constexpr"}
    bwd = {"h_ptr": "*fp32", "x_ptr": f"*{dt}", "v0_ptr": "*fp32", "gs_ptr": f"*{dt}", "gvT_ptr": "*fp32",
           "gx_ptr": f"*{dt}", "gv0_ptr": "*fp32", "gtau_ptr": "*fp32", "N": "i32", "T": "i32", "LAST": "i64",
           "inv_tau": "fp32", "decay": "fp32", "v_th": "fp32", "v_reset": "fp32", "alpha": "fp32",
           "BLOCK": "constexpr", "CHUNK": "constexpr", "HARD": "constexpr", "DECAY_INPUT": "constexpr",
           "DETACH_RESET": "constexpr", "SURROGATE": "constexpr", "HAS_GS": "constexpr", "HAS_GV": "constexpr",
           "TAU_GRAD": "constexpr"}
    return fwd, bwd


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
@pytest.mark.parametrize("hard,decay", [(True, True), (False, False)])
def test_lif_kernels_compile(dt, hard, decay):
    fwd, bwd = lif_signatures(dt)
    k = compile_kernel(LIF._lif_fwd_kernel, fwd,
                       {"BLOCK": 1024, "CHUNK": 8, "HARD": hard, "DECAY_INPUT": decay, "STORE_H": True},
                       aligned=("x_ptr", "v0_ptr", "s_ptr", "h_ptr", "vT_ptr", "N"))
    assert any(op.startswith("ld.global.v4") for op in global_ops(k)), global_ops(k)
    for sur, flags in ((0, (True, True, True)), (1, (False, False, False))):
        compile_kernel(LIF._lif_bwd_kernel, bwd,
                       {"BLOCK": 256, "CHUNK": 8, "HARD": hard, "DECAY_INPUT": decay, "DETACH_RESET": not flags[0],
                        "SURROGATE": sur, "HAS_GS": flags[0], "HAS_GV": flags[1], "TAU_GRAD": flags[2]},
                       num_warps=2)


@pytest.mark.parametrize("dt", ["fp16", "bf16"])
def test_wkv4_kernels_compile(dt):
    fwd = {"w_ptr": "*fp32", "u_ptr": "*fp32", "k_ptr": f"*{dt}", "v_ptr": f"*{dt}", "aa_ptr": "*fp32",
           "bb_ptr": "*fp32", "pp_ptr": "*fp32", "y_ptr": f"*{dt}", "sa_ptr": "*fp32", "sb_ptr": "*fp32",
           "sp_ptr": "*fp32", "oa_ptr": "*fp32", "ob_ptr": "*fp32", "op_ptr": "*fp32", "B": "i32", "L": "i32",
           "D": "i32", "LD": "i32", "BLOCK": "constexpr", "CHUNK": "constexpr", "SAVE": "constexpr"}
    for save in (True, False):
        compile_kernel(WKV._wkv4_fwd_kernel, fwd, {"BLOCK": 64, "CHUNK": 8, "SAVE": save}, num_warps=2)
    bwd = {"w_ptr": "*fp32", "u_ptr": "*fp32", "k_ptr": f"*{dt}", "v_ptr": f"*{dt}", "gy_ptr": f"*{dt}",
           "sa_ptr": "*fp32", "sb_ptr": "*fp32", "sp_ptr": "*fp32", "gk_ptr": f"*{dt}", "gv_ptr": f"*{dt}",
           "gw_ptr": "*fp32", "gu_ptr": "*fp32", "gaa_ptr": "*fp32", "gbb_ptr": "*fp32", "gpp_ptr": "*fp32",
           "B": "i32", "L": "i32", "D": "i32", "LD": "i64", "LAST": "i64", "BLOCK": "constexpr", "CHUNK": "constexpr"}
    compile_kernel(WKV._wkv4_bwd_kernel, bwd, {"BLOCK": 128, "CHUNK": 8}, num_warps=4)


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_adaptive_spike_and_counter_compile(dt):
    sig = {"x_ptr": f"*{dt}", "y_ptr": f"*{dt}", "n_ptr": "*i32", "vth_ptr": "*fp32", "D": "i32", "D_f": "fp32",
           "k": "fp32", "eps": "fp32", "max_count": "fp32", "BLOCK": "constexpr", "SINGLE": "constexpr",
           "CLAMP": "constexpr", "COUNTS": "constexpr"}
    k = compile_kernel(AS._adaptive_spike_kernel, sig, {"BLOCK": 1024, "SINGLE": True, "CLAMP": False, "COUNTS": False},
                       aligned=("x_ptr", "y_ptr", "D"))
    assert any(op.startswith("ld.global.v4") or op.startswith("ld.global.v2") for op in global_ops(k))
    compile_kernel(AS._adaptive_spike_kernel, sig, {"BLOCK": 4096, "SINGLE": False, "CLAMP": True, "COUNTS": False},
                   num_warps=16)
    compile_kernel(AS._adaptive_spike_kernel, sig, {"BLOCK": 1024, "SINGLE": True, "CLAMP": True, "COUNTS": True})
    compile_kernel(AS._adaptive_spike_kernel, sig, {"BLOCK": 512, "SINGLE": False, "CLAMP": False, "COUNTS": True})
    compile_kernel(AS._count_kernel, {"x_ptr": f"*{dt}", "out_ptr": "*i32", "n": "i64", "BLOCK": "constexpr"},
                   {"BLOCK": 4096})
    compile_kernel(AS._count_kernel, {"x_ptr": "*u8", "out_ptr": "*i32", "n": "i32", "BLOCK": "constexpr"},
                   {"BLOCK": 4096})
