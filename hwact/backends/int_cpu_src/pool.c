/* The worker pool of the integer CPU runtime (hwact_int.h): threads started once, on first need, and
   reused by every kernel call (starting threads per call cost more than a small kernel's work).

   pool_run(threads, tasks, fn, ctx) runs fn(ctx, t, tasks) for t = 0..tasks−1 on the calling thread and
   threads − 1 workers, and returns when all are done. Tasks are handed out one at a time under the pool's
   lock, so the caller runs whatever no worker has picked up yet (a worker that wakes late finds less or
   nothing left instead of holding up the call; more tasks than threads make that finer). One call runs
   on the pool at a time: a call made while the pool is busy (from another thread, or from inside a task)
   runs its tasks on the calling thread, with the same results.

   Workers poll for the next call for SPIN_NS after their last task (kernel calls come in quick
   succession; waking a sleeping thread costs tens of µs, far more on a busy machine) and then sleep on a
   condition variable; the caller, its own tasks done, polls as long for the workers' before it sleeps.
   Workers block every signal (a signal goes to the caller's thread, e.g. Python's main thread) and are
   never joined: at process exit they are simply gone, so exit cannot hang on them. A forked child has no
   workers (fork copies only the calling thread): pthread_atfork resets the pool there and the child
   starts its own on first need. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime under -std=c11 */
#include "hwact_int.h"

#include <pthread.h>
#include <signal.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ volatile("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

#define SPIN_NS 100000 /* how long a worker polls for the next call, and the caller for the last task */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;     /* the job fields below */
static pthread_mutex_t g_dispatch = PTHREAD_MUTEX_INITIALIZER; /* one pool_run on the pool at a time */
static pthread_cond_t g_wake = PTHREAD_COND_INITIALIZER;       /* a new generation */
static pthread_cond_t g_done = PTHREAD_COND_INITIALIZER;       /* remaining reached 0 */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static unsigned g_generation; /* advanced once per pool_run (read without the lock while spinning) */
static pool_task g_fn;
static void *g_ctx;
static int g_tasks, g_next;
static unsigned g_remaining;  /* tasks not finished (atomic: the caller polls it without the lock) */
static int g_workers;         /* started (the caller is not counted) */
static int64_t g_dispatches;  /* pool_run calls that went to the workers */
static int g_default_threads = 1;
static __thread int t_busy;   /* this thread is inside pool_run or a task: nested calls run inline */

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Poll *word for up to SPIN_NS; 1 as soon as it differs from value, 0 when the time is up. */
static int poll_change(const unsigned *word, unsigned value) {
    int64_t deadline = now_ns() + SPIN_NS;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != value)
                return 1;
            CPU_RELAX();
        }
        if (now_ns() > deadline)
            return 0;
    }
}

/* Take and run tasks of generation `gen` until none is left; the lock is held on entry and exit. */
static void take_tasks(unsigned gen) {
    while (g_generation == gen && g_next < g_tasks) {
        int t = g_next++, tasks = g_tasks;
        pool_task fn = g_fn;
        void *ctx = g_ctx;
        pthread_mutex_unlock(&g_lock);
        fn(ctx, t, tasks);
        pthread_mutex_lock(&g_lock);
        if (__atomic_sub_fetch(&g_remaining, 1, __ATOMIC_ACQ_REL) == 0)
            pthread_cond_broadcast(&g_done);
    }
}

static void *worker_main(void *arg) {
    unsigned seen = (unsigned)(uintptr_t)arg;
    t_busy = 1;
    for (;;) {
        poll_change(&g_generation, seen);
        pthread_mutex_lock(&g_lock);
        while (g_generation == seen)
            pthread_cond_wait(&g_wake, &g_lock);
        seen = g_generation;
        take_tasks(seen);
        pthread_mutex_unlock(&g_lock);
    }
    return NULL;
}

/* fork: the child has only the thread that forked; no pool_run is in flight (prepare holds dispatch) */
static void fork_prepare(void) { pthread_mutex_lock(&g_dispatch); }
static void fork_parent(void) { pthread_mutex_unlock(&g_dispatch); }
static void fork_child(void) {
    pthread_mutex_init(&g_lock, NULL);
    pthread_mutex_init(&g_dispatch, NULL);
    pthread_cond_init(&g_wake, NULL);
    pthread_cond_init(&g_done, NULL);
    g_workers = 0;
    g_tasks = g_next = 0;
    g_remaining = 0;
}
static void register_fork_handlers(void) { pthread_atfork(fork_prepare, fork_parent, fork_child); }

/* Start workers until there are `want` (lock held). A failed start leaves fewer: the caller runs the rest. */
static void grow(int want) {
    if (want > POOL_MAX_THREADS - 1)
        want = POOL_MAX_THREADS - 1;
    if (g_workers >= want)
        return;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (g_workers < want) {
        pthread_t id;
        if (pthread_create(&id, &attr, worker_main, (void *)(uintptr_t)g_generation) != 0)
            break;
        g_workers++;
    }
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

void pool_run(int threads, int tasks, pool_task fn, void *ctx) {
    if (tasks <= 0)
        return;
    if (threads > tasks)
        threads = tasks;
    if (threads <= 1 || t_busy || pthread_mutex_trylock(&g_dispatch) != 0) {
        int outer = t_busy;
        t_busy = 1;
        for (int t = 0; t < tasks; t++)
            fn(ctx, t, tasks);
        t_busy = outer;
        return;
    }
    pthread_once(&g_once, register_fork_handlers);
    t_busy = 1;
    pthread_mutex_lock(&g_lock);
    grow(threads - 1);
    g_dispatches++;
    g_fn = fn;
    g_ctx = ctx;
    g_tasks = tasks;
    g_next = 0;
    __atomic_store_n(&g_remaining, (unsigned)tasks, __ATOMIC_RELEASE);
    unsigned gen = g_generation + 1;
    __atomic_store_n(&g_generation, gen, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&g_wake);
    take_tasks(gen);
    if (__atomic_load_n(&g_remaining, __ATOMIC_ACQUIRE) > 0) { /* a worker is still at its task */
        pthread_mutex_unlock(&g_lock);
        int64_t deadline = now_ns() + SPIN_NS;
        while (__atomic_load_n(&g_remaining, __ATOMIC_ACQUIRE) > 0 && now_ns() < deadline)
            for (int i = 0; i < 64; i++) CPU_RELAX();
        pthread_mutex_lock(&g_lock);
    }
    while (__atomic_load_n(&g_remaining, __ATOMIC_ACQUIRE) > 0)
        pthread_cond_wait(&g_done, &g_lock);
    pthread_mutex_unlock(&g_lock);
    t_busy = 0;
    pthread_mutex_unlock(&g_dispatch);
}

int pool_threads_for(int64_t work, int64_t min_work, int64_t items) {
    int64_t threads = __atomic_load_n(&g_default_threads, __ATOMIC_RELAXED);
    int64_t by_work = min_work > 0 ? work / min_work : threads;
    if (threads > by_work)
        threads = by_work;
    if (threads > items)
        threads = items;
    return threads < 1 ? 1 : (int)threads;
}

void hw_set_threads(int n) {
    if (n < 1)
        n = 1;
    if (n > POOL_MAX_THREADS)
        n = POOL_MAX_THREADS;
    __atomic_store_n(&g_default_threads, n, __ATOMIC_RELAXED);
}

int hw_threads(void) { return __atomic_load_n(&g_default_threads, __ATOMIC_RELAXED); }

int64_t hw_pool_dispatches(void) {
    pthread_mutex_lock(&g_lock);
    int64_t n = g_dispatches;
    pthread_mutex_unlock(&g_lock);
    return n;
}

int hw_pool_workers(void) {
    pthread_mutex_lock(&g_lock);
    int n = g_workers;
    pthread_mutex_unlock(&g_lock);
    return n;
}
