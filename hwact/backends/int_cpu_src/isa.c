/* ISA selection of the integer CPU runtime (hwact_int.h): which SIMD path the kernels take.

   The same file builds for x86-64 (scalar, AVX2, AVX-512 VNNI) and aarch64 (scalar, NEON, NEON dot
   product). A path is available when the CPU reports the instructions AND the operating system saves
   their register state (x86: XCR0 via xgetbv; aarch64: the kernel's HWCAP bits already mean both).
   The choice is made at first use; hw_force_isa lets tests run every available path. */
#include "hwact_int.h"

#if defined(__x86_64__)
#include <cpuid.h>
#elif defined(__aarch64__)
#include <sys/auxv.h>
#include <asm/hwcap.h>
#endif

static int g_isa = -1; /* -1: not chosen yet */

#if defined(__x86_64__)
/* XCR0: the register state the OS saves on a context switch (0 when OSXSAVE is off). */
static uint64_t xcr0(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) /* OSXSAVE */
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

int hw_isa_available(int isa) {
    if (isa == HW_ISA_SCALAR)
        return 1;
#if defined(__x86_64__)
    __builtin_cpu_init();
    uint64_t state = xcr0();
    int ymm = (state & 0x6) == 0x6;           /* XMM and YMM state */
    int zmm = ymm && (state & 0xe0) == 0xe0;  /* opmask, ZMM_Hi256, Hi16_ZMM */
    if (isa == HW_ISA_AVX2)
        return ymm && __builtin_cpu_supports("avx2");
    if (isa == HW_ISA_AVX512VNNI)
        return zmm && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#elif defined(__aarch64__)
    unsigned long caps = getauxval(AT_HWCAP);
    if (isa == HW_ISA_NEON)
        return (caps & HWCAP_ASIMD) != 0;
    if (isa == HW_ISA_NEON_DOTPROD)
        return (caps & HWCAP_ASIMD) && (caps & HWCAP_ASIMDDP);
#endif
    return 0;
}

static int best_isa(void) {
    static const int order[] = {HW_ISA_AVX512VNNI, HW_ISA_NEON_DOTPROD, HW_ISA_AVX2, HW_ISA_NEON};
    for (unsigned i = 0; i < sizeof order / sizeof order[0]; i++)
        if (hw_isa_available(order[i]))
            return order[i];
    return HW_ISA_SCALAR;
}

int hw_isa(void) {
    int isa = __atomic_load_n(&g_isa, __ATOMIC_ACQUIRE);
    if (isa < 0) {
        isa = best_isa();
        __atomic_store_n(&g_isa, isa, __ATOMIC_RELEASE);
    }
    return isa;
}

int hw_force_isa(int isa) {
    if (isa == -2) {
        __atomic_store_n(&g_isa, best_isa(), __ATOMIC_RELEASE);
        return 0;
    }
    if (isa < HW_ISA_SCALAR || isa > HW_ISA_NEON_DOTPROD || !hw_isa_available(isa))
        return -1;
    __atomic_store_n(&g_isa, isa, __ATOMIC_RELEASE);
    return 0;
}

const char *hw_isa_name(int isa) {
    switch (isa) {
    case HW_ISA_SCALAR: return "scalar";
    case HW_ISA_AVX2: return "avx2";
    case HW_ISA_AVX512VNNI: return "avx512vnni";
    case HW_ISA_NEON: return "neon";
    case HW_ISA_NEON_DOTPROD: return "neon-dotprod";
    default: return "unknown";
    }
}
