"""A written model of DDP efficiency at 8-32 GPUs for the ImageNet recipes (a calculation, not a measurement).

`python -m bench.ddp_model`. Efficiency = compute / (compute + all-reduce time not hidden behind backward).
Assumptions (edit them to match your cluster):
- gradients are fp32: 4 bytes x parameters; ring all-reduce moves 2(N-1)/N of them per GPU;
- DDP's bucketed all-reduce overlaps with backward, about 60% of a step's compute;
- per-GPU training throughput of the student alone at a per-GPU batch >= 32 (H200-class, AMP, channels_last):
  resnet18 13,000 images/s, mobilenet_v1 9,000, resnet50 4,500 (smaller per-GPU batches are slower still, which
  this model ignores, so it is optimistic there);
- an online frozen teacher adds its forward pass: resnet34 ~40% of a resnet18 step, resnet50 ~25% of a
  mobilenet_v1 step; a feature bank (teacher.mode=bank) removes it;
- bus bandwidth: 8 GPUs in one node over NVLink ~370 GB/s; across nodes either well connected (8 x 400 Gb/s
  InfiniBand per node, ~200 GB/s at these message sizes) or commodity (2 x 100 Gb/s per node, ~20 GB/s).
"""

from __future__ import annotations

PAIRS = {  # student: (parameters, images/s, teacher forward as a fraction of the student step)
    "resnet18 (teacher resnet34)": (11.69e6, 13000, 0.40),
    "mobilenet_v1 (teacher resnet50)": (4.23e6, 9000, 0.25),
}
FABRICS = {"1 node (NVLink)": 370e9, "multi-node, 8x400G IB": 200e9, "multi-node, 2x100G": 20e9}


def efficiency(params: float, ips: float, teacher: float, gpus: int, per_gpu: int, busbw: float) -> float:
    compute = per_gpu / ips * (1 + teacher)
    comm = 2 * (gpus - 1) / gpus * 4 * params / busbw
    return compute / (compute + max(0.0, comm - 0.6 * compute))


def main() -> None:
    print("| student | GPUs | fabric | per-GPU batch | bank | online teacher |\n|---|---:|---|---:|---:|---:|")
    for name, (params, ips, teacher) in PAIRS.items():
        for gpus, fabric in ((8, "1 node (NVLink)"), (16, "multi-node, 8x400G IB"), (32, "multi-node, 8x400G IB"),
                             (16, "multi-node, 2x100G"), (32, "multi-node, 2x100G")):
            for global_batch in (256, 2048):
                per = global_batch // gpus
                if global_batch == 2048 and gpus != 32:
                    continue
                bank = efficiency(params, ips, 0.0, gpus, per, FABRICS[fabric])
                online = efficiency(params, ips, teacher, gpus, per, FABRICS[fabric])
                print(f"| {name} | {gpus} | {fabric} | {per}{' (global 2048)' if global_batch == 2048 else ''} "
                      f"| {bank:.2f} | {online:.2f} |")


if __name__ == "__main__":
    main()
