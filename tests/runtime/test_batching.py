"""The llama.cpp scheduler's rules, read from its step trace: who joins, who decodes, whose prompt is read."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from slm_runtime.backends.base import DoneEvent, ErrorEvent, GenerationJob, GenerationStats, SamplingOptions
from slm_runtime.backends.llama_cpp import LlamaCppBackend
from slm_runtime.backends.llama_cpp.backend import CPU_PREFILL_TARGET
from slm_runtime.backends.llama_cpp.batching import StepPlan, plan_prefill
from slm_runtime.settings import ServeSettings

pytestmark = pytest.mark.runtime

STEP_TOKENS = 48  # small, so that prompts take several steps


@pytest.fixture
def backend(tiny_gguf: Path) -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(
        ServeSettings(
            model=tiny_gguf,
            context_length=512,
            parallel_requests=4,
            batch_size=STEP_TOKENS,
            threads=2,
            embeddings=False,
        )
    )
    yield backend
    backend.close()


async def _result(job: GenerationJob) -> GenerationStats:
    while True:
        event = await job.next_event()
        if isinstance(event, ErrorEvent):
            raise AssertionError(event.message)
        if isinstance(event, DoneEvent):
            return event.stats


def test_prompt_tokens_go_first_come_first_served_within_the_budget() -> None:
    # Whole prompts in arrival order while the step holds fewer than the target...
    assert plan_prefill([37, 37, 37, 37], room=255, target=96) == [37, 37, 37, 0]
    assert plan_prefill([10, 40, 40, 40], room=255, target=96) == [10, 40, 40, 40]
    # ...within the room the running sequences' tokens left.
    assert plan_prefill([30, 30, 30], room=47, target=96) == [30, 17, 0]
    # A long prompt fills the step alone; the next one waits.
    assert plan_prefill([300, 20], room=255, target=96) == [255, 0]
    assert plan_prefill([12], room=0, target=96) == [0]
    assert plan_prefill([], room=10, target=96) == []


async def test_newcomers_read_their_prompts_together_while_a_generation_keeps_decoding(
    backend: LlamaCppBackend,
) -> None:
    scheduler = backend.scheduler
    assert scheduler is not None
    plans: list[StepPlan] = []
    held, release = threading.Event(), threading.Event()

    def observe(plan: StepPlan) -> None:
        plans.append(plan)
        if len(plans) == 3:  # the worker waits here, mid-generation, until the newcomers are queued
            held.set()
            release.wait(60)

    scheduler.observer = observe
    loop = asyncio.get_running_loop()
    long_prompt = backend.tokenize("long", add_special=True)
    long_job = GenerationJob(long_prompt, SamplingOptions(temperature=0, max_tokens=40), loop)
    backend.submit(long_job)
    long_done = asyncio.ensure_future(_result(long_job))
    assert await asyncio.to_thread(held.wait, 60)
    # Distinct lengths tell the newcomers apart in the trace; each is longer than half a step.
    prompts = [backend.tokenize(f"newcomer {'x' * (30 + i)}", add_special=True) for i in range(3)]
    newcomers = [GenerationJob(p, SamplingOptions(temperature=0, max_tokens=3), loop) for p in prompts]
    for job in newcomers:
        backend.submit(job)
    release.set()
    stats = await asyncio.gather(long_done, *(_result(job) for job in newcomers))

    assert [s.completion_tokens for s in stats] == [40, 3, 3, 3]
    (long_id,) = plans[0].admitted
    assert plans[0].prefill == ((long_id, len(long_prompt)),)
    # The running generation decodes its next token in every step from its first token to its
    # last (39 steps for 40 tokens), through the newcomers' prefill.
    assert [i for i, plan in enumerate(plans) if long_id in plan.decoding] == list(range(1, 40))
    # All three newcomers join in the same step, the first after they were queued...
    joined = plans[3]
    assert len(joined.admitted) == 3
    assert long_id not in joined.admitted
    # ...whose budget their prompts fill, next to the running token: the first comer's whole
    # prompt, then the start of the second one's.
    read: dict[int, int] = {}
    for plan in plans:
        assert len(plan.decoding) + sum(n for _, n in plan.prefill) <= STEP_TOKENS
        for seq_id, n in plan.prefill:
            read[seq_id] = read.get(seq_id, 0) + n
    assert joined.decoding == (long_id,)
    assert sum(n for _, n in joined.prefill) == STEP_TOKENS - 1
    (first_id, first_n), (_, second_n) = joined.prefill
    assert (first_n, second_n) == (len(prompts[0]), STEP_TOKENS - 1 - len(prompts[0]))
    # Every prompt was read exactly once, in arrival order, and each newcomer decoded from the
    # step after its prompt was read.
    assert sorted(read[seq_id] for seq_id in joined.admitted) == sorted(len(p) for p in prompts)
    first_read = [next(i for i, plan in enumerate(plans) if s in dict(plan.prefill)) for s in joined.admitted]
    assert first_read == sorted(first_read)
    assert first_id == joined.admitted[0]


async def test_batched_greedy_picks_what_the_sampler_chain_picks(backend: LlamaCppBackend) -> None:
    """Plain greedy requests take one argmax over the step's logits; top_k 1 runs llama.cpp's chain."""
    scheduler = backend.scheduler
    assert scheduler is not None
    plans: list[StepPlan] = []
    scheduler.observer = plans.append
    loop = asyncio.get_running_loop()
    prompt = backend.tokenize("the same words", add_special=True)
    jobs = [
        GenerationJob(prompt, SamplingOptions(temperature=0, max_tokens=24), loop),
        GenerationJob(prompt, SamplingOptions(temperature=0.7, top_k=1, seed=5, max_tokens=24), loop),
    ]
    for job in jobs:
        backend.submit(job)
    greedy, chain = await asyncio.gather(*(_result(job) for job in jobs))
    assert greedy.output_tokens == chain.output_tokens
    assert len(greedy.output_tokens) == 24
    assert any(len(plan.decoding) == 2 for plan in plans)  # they ran in the same steps


async def test_a_step_stops_taking_prompts_once_it_holds_enough_to_read_at_full_speed(
    tiny_gguf: Path,
) -> None:
    backend = LlamaCppBackend(
        ServeSettings(
            model=tiny_gguf,
            context_length=512,
            parallel_requests=5,
            batch_size=256,
            threads=2,
            embeddings=False,
        )
    )
    try:
        scheduler = backend.scheduler
        assert scheduler is not None
        plans: list[StepPlan] = []
        held, release = threading.Event(), threading.Event()

        def observe(plan: StepPlan) -> None:
            plans.append(plan)
            if len(plans) == 1:  # hold the first step until the newcomers are queued
                held.set()
                release.wait(60)

        scheduler.observer = observe
        loop = asyncio.get_running_loop()
        opener = GenerationJob(
            backend.tokenize("a", add_special=True), SamplingOptions(temperature=0, max_tokens=8), loop
        )
        backend.submit(opener)
        assert await asyncio.to_thread(held.wait, 60)
        prompts = [backend.tokenize(f"{i} {'x' * 36}", add_special=True) for i in range(4)]
        # Two of them hold less than the target, three more: the fourth waits for the next step.
        assert all(2 * len(p) < CPU_PREFILL_TARGET <= 3 * len(p) for p in prompts)
        jobs = [GenerationJob(p, SamplingOptions(temperature=0, max_tokens=2), loop) for p in prompts]
        for job in jobs:
            backend.submit(job)
        release.set()
        await asyncio.gather(*(_result(job) for job in [opener, *jobs]))
    finally:
        backend.close()
    joined = plans[1]
    assert len(joined.admitted) == 4
    assert [n for _, n in joined.prefill] == [len(p) for p in prompts[:3]]
    assert [n for _, n in plans[2].prefill] == [len(prompts[3])]
