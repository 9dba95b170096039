/* The kernels' thread pool (see pool.h).
 *
 * Chunks are claimed with a compare-and-swap on `ticket` (job generation << 32 | next chunk), and
 * a job is over when all its chunks are done, not when every worker has checked in: a worker
 * that is descheduled (another process on its core) never holds the caller up unless it is
 * inside a chunk, and the caller takes whatever chunks nobody else has. A worker reads a job's
 * description under a sequence number (`job_seq`, odd while the caller writes it), so one that
 * wakes late cannot mix two jobs up. One job at a time: a caller that finds the pool busy (two
 * engines in one process) runs its job alone rather than waiting. */
#define _GNU_SOURCE
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

#define SY_POOL_MAX_WORKERS 255
#define SY_POOL_POLL_NS 2000000 /* 2 ms: spans every gap inside a decode step and between steps */

static pthread_mutex_t dispatch_mu = PTHREAD_MUTEX_INITIALIZER; /* held for a whole job */
static pthread_mutex_t sleep_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t sleep_cv = PTHREAD_COND_INITIALIZER;
static int workers; /* started so far; only grows (under dispatch_mu) */
static uint32_t generation; /* of the last job (under dispatch_mu) */
static _Atomic uint64_t ticket;
static _Atomic uint64_t job_seq;
static _Atomic int64_t chunks_done;
static _Atomic int sleepers;
static _Atomic(sy_range_fn) job_fn;
static _Atomic(void *) job_ctx;
static _Atomic int64_t job_n, job_grain, job_chunks;

struct job {
    sy_range_fn fn;
    void *ctx;
    int64_t n, grain, chunks;
};

static void run_chunks(uint32_t gen, const struct job *job) {
    uint64_t t = atomic_load(&ticket);
    for (;;) {
        if ((uint32_t)(t >> 32) != gen || (int64_t)(t & 0xffffffffu) >= job->chunks) return;
        if (!atomic_compare_exchange_weak(&ticket, &t, t + 1)) continue;
        const int64_t begin = (int64_t)(t & 0xffffffffu) * job->grain;
        job->fn(job->ctx, begin, begin + job->grain < job->n ? begin + job->grain : job->n);
        atomic_fetch_add(&chunks_done, 1);
        t = atomic_load(&ticket);
    }
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Job `gen`'s description, or 0 when it is already being replaced by the next one. */
static int read_job(uint32_t gen, struct job *job) {
    if (atomic_load(&job_seq) != 2 * (uint64_t)gen) return 0;
    job->fn = atomic_load_explicit(&job_fn, memory_order_relaxed);
    job->ctx = atomic_load_explicit(&job_ctx, memory_order_relaxed);
    job->n = atomic_load_explicit(&job_n, memory_order_relaxed);
    job->grain = atomic_load_explicit(&job_grain, memory_order_relaxed);
    job->chunks = atomic_load_explicit(&job_chunks, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    return atomic_load(&job_seq) == 2 * (uint64_t)gen;
}

static void *worker_main(void *arg) {
    uint32_t seen = (uint32_t)(uintptr_t)arg;
    for (;;) {
        const int64_t since = now_ns();
        uint32_t gen;
        for (unsigned polls = 1; (gen = (uint32_t)(atomic_load(&ticket) >> 32)) == seen; polls++) {
            if (polls % 32 == 0 && now_ns() - since > SY_POOL_POLL_NS) {
                pthread_mutex_lock(&sleep_mu);
                atomic_fetch_add(&sleepers, 1);
                while ((gen = (uint32_t)(atomic_load(&ticket) >> 32)) == seen) pthread_cond_wait(&sleep_cv, &sleep_mu);
                atomic_fetch_sub(&sleepers, 1);
                pthread_mutex_unlock(&sleep_mu);
                break;
            }
            sched_yield(); /* the core goes to anyone else who wants it */
        }
        seen = gen;
        struct job job;
        if (read_job(gen, &job)) run_chunks(gen, &job);
    }
    return NULL;
}

/* After fork() only the forking thread exists in the child: forget the workers. */
static void forget_workers(void) {
    pthread_mutex_init(&dispatch_mu, NULL);
    pthread_mutex_init(&sleep_mu, NULL);
    pthread_cond_init(&sleep_cv, NULL);
    workers = 0;
    atomic_store(&sleepers, 0);
}

static void start_workers(int wanted) {
    static int registered;
    if (!registered) {
        pthread_atfork(NULL, NULL, forget_workers);
        registered = 1;
    }
    if (wanted > SY_POOL_MAX_WORKERS) wanted = SY_POOL_MAX_WORKERS;
    while (workers < wanted) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int failed = pthread_create(&thread, &attr, worker_main, (void *)(uintptr_t)generation);
        pthread_attr_destroy(&attr);
        if (failed) return;
        workers++;
    }
}

void sy_parallel_for(int64_t n, int64_t grain, int threads, sy_range_fn fn, void *ctx) {
    if (grain < 1) grain = 1;
    const int64_t chunks = (n + grain - 1) / grain;
    if (threads <= 1 || chunks <= 1 || chunks > 0x7fffffff || pthread_mutex_trylock(&dispatch_mu) != 0) {
        fn(ctx, 0, n);
        return;
    }
    start_workers(threads - 1);
    if (workers == 0) {
        pthread_mutex_unlock(&dispatch_mu);
        fn(ctx, 0, n);
        return;
    }
    const uint32_t gen = ++generation;
    atomic_store(&job_seq, 2 * (uint64_t)gen - 1);
    atomic_store_explicit(&job_fn, fn, memory_order_relaxed);
    atomic_store_explicit(&job_ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&job_n, n, memory_order_relaxed);
    atomic_store_explicit(&job_grain, grain, memory_order_relaxed);
    atomic_store_explicit(&job_chunks, chunks, memory_order_relaxed);
    atomic_store(&chunks_done, 0);
    atomic_store(&job_seq, 2 * (uint64_t)gen);
    atomic_store(&ticket, (uint64_t)gen << 32); /* seq_cst: ordered before reading `sleepers` */
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&sleep_mu);
        pthread_cond_broadcast(&sleep_cv);
        pthread_mutex_unlock(&sleep_mu);
    }
    const struct job job = {fn, ctx, n, grain, chunks};
    run_chunks(gen, &job);
    for (unsigned polls = 1; atomic_load(&chunks_done) < chunks; polls++) {
        if (polls % 64 == 0) sched_yield();
    }
    pthread_mutex_unlock(&dispatch_mu);
}
