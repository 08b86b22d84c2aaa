"""``hessdistill-precompute``: build a subset's store from its source (if missing), then label it with the
teacher's energies, forces and Hessians. Rerunning resumes where a killed run stopped.

    hessdistill-precompute teacher=ani1x subset=demo_hcno
    hessdistill-precompute teacher=mace subset=... shard=2/8        # one of 8 processes/GPUs (array job)
    hessdistill-precompute teacher=mace subset=... merge_shards=8   # join the 8 shard files into the store
    hessdistill-precompute teacher=mace subset=... storage.compression=gzip   # pack the finished store
    hessdistill-precompute subset=... verify=true   # check every block of the store against its content digests
    hessdistill-precompute teacher=mace_mp subset=... reference=teacher   # structures without DFT labels
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from hessdistill.config import CONFIG_DIR
from hessdistill.data.labels import labels_required
from hessdistill.data.store import HessianStore
from hessdistill.data.store_compression import compress_store
from hessdistill.data.subset import build_store
from hessdistill.devices import resolve_device, shard_device
from hessdistill.hessian.footprint import check_teacher_hessians
from hessdistill.teacher_step.run import precompute_teacher
from hessdistill.teacher_step.shards import merge_shards, open_shard, parse_shard, shard_indices
from hessdistill.teachers import instantiate_teacher

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    store_path = build_store(cfg.subset, require_labels=labels_required(cfg.reference))
    if cfg.get("verify"):
        with HessianStore(store_path) as store:
            checked = store.verify()
        log.info("%s matches its content digests (blocks checked per group; null: no digest): %s", store.path,
                 checked)
        return {"verified": checked}
    store = HessianStore(store_path, mode="a")
    if cfg.merge_shards:
        merged = merge_shards(store, cfg.teacher.name, int(cfg.merge_shards))
        store.close()
        log.info("merged %d structures of teacher %s from %d shards into %s", merged, cfg.teacher.name,
                 cfg.merge_shards, store.path)
        return {"merged": merged, **_compress(store.path, cfg.storage)}
    if cfg.memory_check:  # before the teacher loads: refused now, not by the OOM killer at the largest structure
        shard = shard_indices(len(store), *parse_shard(cfg.shard)) if cfg.shard else None
        check_teacher_hessians(store.n_atoms(), shard, cfg.storage.rows if cfg.storage.layout == "rows" else None,
                               str(store.path), cfg.memory_warn_gib)
    indices, target, device = None, store, resolve_device(cfg.device)
    if cfg.shard:
        i, n = parse_shard(cfg.shard)
        indices, target = shard_indices(len(store), i, n), open_shard(store, cfg.teacher.name, i, n)
        device = shard_device(cfg.device, i)
        store.close()
    teacher = instantiate_teacher(cfg.teacher).to(device)
    st = cfg.storage
    result = precompute_teacher(target, teacher, cfg.batch_size, cfg.chunk_size, cfg.row_strategy, cfg.symmetry_tol,
                                layout=st.layout, dtype=st.dtype, rows_per_structure=st.rows, seed=st.seed,
                                indices=indices, features=cfg.features, max_batch=cfg.max_batch,
                                memory_budget_gib=cfg.memory_budget_gib)
    target.close()
    log.info("teacher %s: %d computed now, %d structures in %s, max Hessian asymmetry %.2e eV/Å², batch size %d, "
             "chunk %s", teacher.name, result["computed"], result["total"], target.path, result["max_asymmetry"],
             result["batch_size"], result["chunk_size"])
    if not cfg.shard:  # shard files are joined (then compressed) by merge_shards
        result.update(_compress(target.path, st))
    return result


def _compress(path, storage: DictConfig) -> dict:
    """Pack the finished store with ``storage.compression`` (null: leave it uncompressed)."""
    if not storage.get("compression"):
        return {}
    sizes = compress_store(path, storage.compression, storage.get("compression_level", 4))
    log.info("%s compressed with %s: %.1f MB -> %.1f MB", path, storage.compression, sizes["bytes_before"] / 1e6,
             sizes["bytes_after"] / 1e6)
    return sizes


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="precompute")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    from hessdistill.cli.entry import run as run_command

    run_command("precompute")
