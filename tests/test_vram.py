"""VRAM placement arithmetic with given capacities (no GPU needed)."""

from __future__ import annotations

from tiers.vram import Placement, VramTier, choose_gpu_layers, free_device_memory, oom_attempts

MiB = 1 << 20
LAYERS = [100 * MiB] * 10


def test_everything_fits_including_the_output_layer() -> None:
    p = choose_gpu_layers(2000 * MiB, LAYERS, other_bytes=200 * MiB, reserve=100 * MiB)
    assert p == Placement(11, 1200 * MiB, True)


def test_partial_offload_counts_whole_layers_after_reserve_and_context() -> None:
    p = choose_gpu_layers(1000 * MiB, LAYERS, other_bytes=200 * MiB,
                          context_bytes=150 * MiB, reserve=100 * MiB)
    assert p.n_gpu_layers == 7 and p.gpu_bytes == 700 * MiB and not p.all_on_gpu


def test_all_layers_but_not_the_output() -> None:
    p = choose_gpu_layers(1050 * MiB, LAYERS, other_bytes=200 * MiB, reserve=0)
    assert p.n_gpu_layers == 10 and not p.all_on_gpu


def test_nothing_fits() -> None:
    assert choose_gpu_layers(50 * MiB, LAYERS, reserve=0).n_gpu_layers == 0
    assert choose_gpu_layers(0, LAYERS).n_gpu_layers == 0


def test_uneven_layers_are_taken_from_the_last_block_down() -> None:
    layers = [10 * MiB, 10 * MiB, 50 * MiB, 60 * MiB]
    assert choose_gpu_layers(115 * MiB, layers, reserve=0).n_gpu_layers == 2   # 60 + 50
    assert choose_gpu_layers(125 * MiB, layers, reserve=0).n_gpu_layers == 3


def test_oom_sequence_fewer_layers_down_to_none() -> None:
    assert oom_attempts(Placement(11, 0, True), 10) == [11, 10, 8, 6, 4, 2, 0]
    assert oom_attempts(Placement(5, 0, False), 10) == [5, 3, 1, 0]
    assert oom_attempts(Placement(0, 0, False), 10) == [0]


def test_cpu_only_machine_has_no_vram_tier() -> None:
    # This test machine has no NVIDIA driver: NVML is absent, so placement is all-CPU.
    if free_device_memory() is None:
        assert VramTier().place(LAYERS).n_gpu_layers == 0
    else:
        assert VramTier(capacity=0).place(LAYERS).n_gpu_layers == 0
