/* The worker pool behind core's own kernels (pool.h): a generation counter, tasks handed out with
 * an atomic counter, workers that spin briefly on the generation and then sleep on a condition
 * variable. A worker joins a run only while it is open (under the mutex), and the caller returns
 * only when every worker that joined has left, so no worker ever sees two runs' state mixed. */
#include "core/kernels/pool_internal.h"

#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <unistd.h>

#include "core/kernels/blas.h"

/* How long a thread waits actively before it sleeps: a forward pass calls the pool a few hundred
 * times per step, microseconds apart, and a sleeping worker costs a futex wake-up (10-50 us).
 * The first PAUSES rounds only pause; the rest yield the core, so that OpenBLAS's own threads
 * (which share the cores in steps that use sgemm) are not held up by a waiting worker. */
#define PAUSES 256
#define SPIN 4096

/* One round of active waiting. */
static void relax(int round)
{
    if (round < PAUSES)
        _mm_pause();
    else
        sched_yield();
}

typedef struct pool {
    pthread_mutex_t mu;
    pthread_cond_t wake; /* workers wait for a new generation */
    pthread_cond_t done; /* the caller waits for the last worker to leave the run */
    int n_workers;       /* started so far */
    int want;            /* threads a run uses, caller included; 0 = not decided yet */
    /* The current run. fn, arg and n_tasks change only while no worker is inside it (open is 0
     * and active is 0), under mu. */
    _Atomic unsigned gen;
    void (*fn)(void *, int);
    void *arg;
    int n_tasks;
    bool open;          /* workers may still join */
    _Atomic int active; /* workers inside the run */
    _Atomic int next;   /* next task to take */
    int sleeping;       /* workers waiting on wake */
} pool;

static pool P = {.mu = PTHREAD_MUTEX_INITIALIZER,
                 .wake = PTHREAD_COND_INITIALIZER,
                 .done = PTHREAD_COND_INITIALIZER};

/* Takes and runs tasks of the current run until none is left. */
static void work(void)
{
    int t;
    while ((t = atomic_fetch_add_explicit(&P.next, 1, memory_order_relaxed)) < P.n_tasks)
        P.fn(P.arg, t);
}

static void *worker(void *unused)
{
    (void)unused;
    unsigned seen = atomic_load_explicit(&P.gen, memory_order_acquire);
    for (;;) {
        for (int spins = 0;
             atomic_load_explicit(&P.gen, memory_order_relaxed) == seen && spins < SPIN; spins++)
            relax(spins);
        pthread_mutex_lock(&P.mu);
        while (atomic_load_explicit(&P.gen, memory_order_relaxed) == seen) {
            P.sleeping++;
            pthread_cond_wait(&P.wake, &P.mu);
            P.sleeping--;
        }
        seen = atomic_load_explicit(&P.gen, memory_order_relaxed);
        if (!P.open) { /* woke too late: that run is over */
            pthread_mutex_unlock(&P.mu);
            continue;
        }
        atomic_fetch_add_explicit(&P.active, 1, memory_order_relaxed);
        pthread_mutex_unlock(&P.mu);
        work();
        pthread_mutex_lock(&P.mu);
        if (atomic_fetch_sub_explicit(&P.active, 1, memory_order_release) == 1 && !P.open)
            pthread_cond_signal(&P.done);
        pthread_mutex_unlock(&P.mu);
    }
    return NULL;
}

int core__pool_threads(void)
{
    pthread_mutex_lock(&P.mu);
    if (!P.want) {
        int n = core_blas_threads();
        P.want = n < 1 ? 1 : n > CORE_POOL_MAX ? CORE_POOL_MAX : n;
    }
    int n = P.want;
    pthread_mutex_unlock(&P.mu);
    return n;
}

void core__pool_set_threads(int n)
{
    pthread_mutex_lock(&P.mu);
    P.want = n < 1 ? 1 : n > CORE_POOL_MAX ? CORE_POOL_MAX : n;
    pthread_mutex_unlock(&P.mu);
}

/* Starts workers until there are want - 1; a failure to start one only means fewer threads. */
static void start_workers(int want)
{
    while (P.n_workers < want - 1) {
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&th, &at, worker, NULL);
        pthread_attr_destroy(&at);
        if (rc)
            break;
        P.n_workers++;
    }
}

void core__pool_run(int n_tasks, void (*fn)(void *arg, int task), void *arg)
{
    int threads = core__pool_threads();
    if (n_tasks <= 1 || threads <= 1) {
        for (int t = 0; t < n_tasks; t++)
            fn(arg, t);
        return;
    }
    pthread_mutex_lock(&P.mu);
    start_workers(threads);
    if (!P.n_workers) {
        pthread_mutex_unlock(&P.mu);
        for (int t = 0; t < n_tasks; t++)
            fn(arg, t);
        return;
    }
    P.fn = fn;
    P.arg = arg;
    P.n_tasks = n_tasks;
    P.open = true;
    atomic_store_explicit(&P.next, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&P.gen, 1, memory_order_relaxed);
    if (P.sleeping)
        pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.mu);

    work();
    /* Every task is taken; close the run and wait for the workers still inside it. */
    pthread_mutex_lock(&P.mu);
    P.open = false;
    pthread_mutex_unlock(&P.mu);
    for (int spins = 0; atomic_load_explicit(&P.active, memory_order_acquire) > 0 && spins < SPIN;
         spins++)
        relax(spins);
    pthread_mutex_lock(&P.mu);
    while (atomic_load_explicit(&P.active, memory_order_acquire) > 0)
        pthread_cond_wait(&P.done, &P.mu);
    pthread_mutex_unlock(&P.mu);
}
