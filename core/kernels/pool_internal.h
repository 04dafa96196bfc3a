/* A small pool of worker threads for core's own kernels (core-internal).
 *
 * Why core has threads at all: a decode step of up to a few dozen rows is fastest on core's own
 * kernels (quantized matmul straight from the GGUF blocks, the LoRA shrink/expand), which are
 * single-threaded code; OpenBLAS's threads only help the large steps. Splitting those kernels
 * over the machine's cores doubles a step on two cores. docs/ARCHITECTURE.md §2 still holds in its
 * intent: one layer of parallelism at a time (a step runs either OpenBLAS or this pool, never both
 * computing at once), and idle workers block instead of spinning for long (a short bounded spin
 * between the back-to-back calls of one forward pass, then a condition variable).
 *
 * core__pool_run is called from one thread at a time (the forward pass's caller); the workers are
 * created on first use, as many as core__pool_threads() - 1, and live until the process exits.
 * Task results must not depend on which thread ran them.
 */
#ifndef ADAPTREE_CORE_KERNELS_POOL_INTERNAL_H
#define ADAPTREE_CORE_KERNELS_POOL_INTERNAL_H

#define CORE_POOL_MAX 16

/* Runs fn(arg, t) for every t in [0, n_tasks), spread over the calling thread and the workers, and
 * returns when all have finished. With one thread (or one task) it simply runs them in order on
 * the caller. Not reentrant: fn must not call core__pool_run. */
void core__pool_run(int n_tasks, void (*fn)(void *arg, int task), void *arg);

/* Threads a run uses, the caller included: core_blas_threads()'s last setting, at most
 * CORE_POOL_MAX. */
int core__pool_threads(void);

/* Called by core_blas_set_threads. */
void core__pool_set_threads(int n);

#endif
