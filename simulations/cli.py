"""`festa simulate` (merged into the top-level `festa` command)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from festa.shared.config import ConfigError, FederationConfig, load_toml, model_preset, validate

app = typer.Typer(add_completion=False)
console = Console()


@app.command("simulate")
def simulate(
    config: Annotated[Path | None, typer.Option(help="TOML file with a FederationConfig")] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/<timestamp>)")] = None,
    data: Annotated[
        str | None, typer.Option(help="'phantoms' or a folder with manifest.csv")
    ] = None,
    clients: Annotated[int | None, typer.Option(help="virtual clients")] = None,
    partition: Annotated[
        str | None, typer.Option(help="natural | dirichlet:ALPHA | quantity | iid")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="federated rounds")] = None,
    local_steps: Annotated[int | None, typer.Option(help="batches per client per round")] = None,
    tasks: Annotated[str | None, typer.Option(help="comma-separated tasks")] = None,
    wire: Annotated[str | None, typer.Option(help="fp32 | fp16 | bf16 | int8")] = None,
    permute: Annotated[
        bool | None,
        typer.Option(
            "--permute/--no-permute",
            help="p-FeSTA token shuffling (not a privacy measure: the server recovers token positions)",
        ),
    ] = None,
    token_noise: Annotated[
        float | None,
        typer.Option(help="Gaussian noise on sent tokens, std relative to their RMS (0: off)"),
    ] = None,
    label_protection: Annotated[
        str | None,
        typer.Option(
            help="off | noise | tail-only | local-backward: what classification sites do to the gradient they "
            "return (deployments run tail-only)"
        ),
    ] = None,
    label_noise: Annotated[
        float | None,
        typer.Option(help="--label-protection noise: std in units of the label sensitivity"),
    ] = None,
    dp_noise: Annotated[
        float | None,
        typer.Option(help="DP of head/tail updates: noise multiplier (0: off); eps is printed"),
    ] = None,
    dp_clip: Annotated[
        float | None, typer.Option(help="--dp-noise > 0: L2 clipping norm of an update")
    ] = None,
    secure_aggregation: Annotated[
        bool | None,
        typer.Option(
            "--secure-aggregation/--no-secure-aggregation",
            help="the server sees only each task's summed head/tail (needs >= 3 clients per task)",
        ),
    ] = None,
    mode: Annotated[str | None, typer.Option(help="sync | async body steps")] = None,
    pipeline_depth: Annotated[
        int | None,
        typer.Option(help="micro-batches in flight per client (K > 1 needs --mode async)"),
    ] = None,
    degrade: Annotated[
        str | None, typer.Option(help="none | site: simulated sites get a degraded scanner")
    ] = None,
    scanners: Annotated[
        str | None,
        typer.Option(help="--degrade site: default | lowdose50 | blur3 | one degradation SPEC"),
    ] = None,
    degraded_sites: Annotated[
        str | None, typer.Option(help="--degrade site: half (odd-numbered sites) | all")
    ] = None,
    restore: Annotated[
        str | None,
        typer.Option(
            help="none | dps | cddb | cddb-deep | blinddps | gctm: restore degraded sites"
        ),
    ] = None,
    restore_nfe: Annotated[
        int | None, typer.Option(help="restoration network evaluations per image")
    ] = None,
    restore_fit: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="final pull of each restored image towards its scan, keeping small findings "
            "in the training images (0: off; default 1e-2 for every scanner)",
        ),
    ] = None,
    federation: Annotated[
        Path | None,
        typer.Option(help="federation file (TOML): each site's data and task (one client each)"),
    ] = None,
    logit_adjustment: Annotated[
        float | None,
        typer.Option(
            help="client-drift remedy: classification trains on logits + tau x log(local "
            "class prior) (balanced softmax / FedLC); 0: plain cross-entropy"
        ),
    ] = None,
    sampling: Annotated[
        str | None,
        typer.Option(
            help="shuffle | class-balanced: how classification sites draw batches "
            "(class-balanced: equal shares of the classes a site has)"
        ),
    ] = None,
    proximal_mu: Annotated[
        float | None, typer.Option(help="FedProx proximal term mu on heads/tails (0: off)")
    ] = None,
    client_optimizer: Annotated[
        str | None, typer.Option(help="fresh | persist: each site's AdamW state across rounds")
    ] = None,
    server_optimizer: Annotated[
        str | None,
        typer.Option(help="fedavg | fedavgm | fedadam | fedyogi on each task's head/tail"),
    ] = None,
    server_lr: Annotated[
        float | None, typer.Option(help="FedAvgM server learning rate / FedAdam-FedYogi eta")
    ] = None,
    server_momentum: Annotated[
        float | None, typer.Option(help="FedAvgM momentum / FedAdam-FedYogi beta1")
    ] = None,
    image_size: Annotated[int | None, typer.Option(help="image side in pixels")] = None,
    preset: Annotated[
        str,
        typer.Option(help="model size: tiny (64 px), small128 (128 px) or base (ViT-B/16, 224 px)"),
    ] = "tiny",
    seed: Annotated[int | None, typer.Option(help="random seed")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda")] = None,
    store: Annotated[Path | None, typer.Option(help="run store (SQLite) the console reads")] = Path(
        "runs/festa.db"
    ),
    resume: Annotated[
        bool, typer.Option("--resume", help="continue the run in --out from its last checkpoint")
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            help="flower: Flower's simulation engine (Ray); inprocess: clients as plain objects "
            "in this process (fast experiments)"
        ),
    ] = "flower",
) -> None:
    """Run a small non-IID federation on this machine (Flower simulation engine + body service)."""
    try:
        cfg = (
            load_toml(config, FederationConfig)
            if config
            else FederationConfig(model=model_preset(preset))
        )
        updates = {
            k: v
            for k, v in dict(
                clients=clients,
                partition=partition,
                rounds=rounds,
                local_steps=local_steps,
                wire=wire,
                permute=permute,
                token_noise=token_noise,
                label_protection=label_protection,
                label_noise=label_noise,
                secure_aggregation=secure_aggregation,
                dp_noise=dp_noise,
                dp_clip=dp_clip,
                mode=mode,
                pipeline_depth=pipeline_depth,
                degrade=degrade,
                scanners=scanners,
                degraded_sites=degraded_sites,
                restore=restore,
                restore_nfe=restore_nfe,
                restore_fit=restore_fit,
                seed=seed,
                device=device,
            ).items()
            if v is not None
        }
        if tasks is not None:
            updates["tasks"] = [t.strip() for t in tasks.split(",") if t.strip()]
        merged = cfg.model_dump()
        merged.update(updates)
        if data is not None:
            merged["data"] = {**merged["data"], "source": data}
            if data != "phantoms" and partition is None:
                merged["partition"] = "natural"
        drift = dict(
            logit_adjustment=logit_adjustment,
            sampling=sampling,
            proximal_mu=proximal_mu,
            client_optimizer=client_optimizer,
            server_optimizer=server_optimizer,
            server_lr=server_lr,
            server_momentum=server_momentum,
        )
        merged["drift"] = {**merged["drift"], **{k: v for k, v in drift.items() if v is not None}}
        if image_size is not None:
            merged["model"] = {**merged["model"], "image_size": image_size}
        if federation is not None:
            merged["federation"] = str(federation.resolve())
        from festa.client.site_data import config_for_data

        cfg = config_for_data(validate(FederationConfig, merged, "simulate"))
        if cfg.degrade != "none":
            from festa.client.restored_data import scanner_specs

            scanner_specs(cfg.scanners)
    except (ConfigError, ValueError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    from festa.simulations.simulate import ENGINES, run_simulation

    if engine not in ENGINES:
        console.print(
            f"[red]error:[/] --engine must be one of {', '.join(ENGINES)}, not {engine!r}"
        )
        raise typer.Exit(2)
    if resume and out is None:
        console.print("[red]error:[/] --resume needs --out pointing at the run to continue")
        raise typer.Exit(2)
    out = out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    summary = run_simulation(
        cfg, out, resume=resume, store_path=store, console=console, engine=engine
    )
    console.print(f"final metrics: {summary['final']}")


if __name__ == "__main__":
    app()
