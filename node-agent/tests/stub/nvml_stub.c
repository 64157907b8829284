/* A stand-in libnvidia-ml.so.1 for tests: a few fake GPUs, configured by environment.
 *
 *   STUB_NVML_FAIL_INIT=1   nvmlInit_v2 returns NVML_ERROR_DRIVER_NOT_LOADED
 *   STUB_NVML_GPU_COUNT=N   number of GPUs (default 3)
 *   STUB_NVML_PROC_PID=P    pid of the foreign process on GPU 1 (default 4242)
 *   STUB_NVML_GPU1_FREE=B   free bytes on GPU 1 (default 7430346834 of 8 GiB)
 *
 * GPU 1 is the classic 8 GiB desktop card with 6.92 GiB free and one process; every other
 * GPU is an idle 80 GiB H100. Built with -DSTUB_NO_OPTIONAL it lacks nvmlDeviceGetMigMode,
 * nvmlDeviceGetComputeRunningProcesses_v3 and nvmlDeviceGetMemoryInfo_v2 (old driver).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gpuInstanceId, computeInstanceId; } nvmlProcessInfo_t;
typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

static const unsigned long long GIB = 1ULL << 30;
static const unsigned long long MIB = 1ULL << 20;

static unsigned int env_uint(const char *name, unsigned int dflt) {
    const char *v = getenv(name);
    return v ? (unsigned int)strtoul(v, NULL, 10) : dflt;
}

static unsigned long long env_u64(const char *name, unsigned long long dflt) {
    const char *v = getenv(name);
    return v ? strtoull(v, NULL, 10) : dflt;
}

static unsigned int gpu_count(void) { return env_uint("STUB_NVML_GPU_COUNT", 3); }

/* Handles are index + 1 so that NULL is never valid. */
static int handle_index(nvmlDevice_t d) {
    unsigned long i = (unsigned long)d;
    if (i == 0 || i > gpu_count()) return -1;
    return (int)(i - 1);
}

static int is_desktop(int i) { return i == 1; }

static void memory(int i, unsigned long long *total, unsigned long long *reserved, unsigned long long *free) {
    if (is_desktop(i)) {
        *total = 8ULL * GIB;
        *reserved = 248ULL * MIB;
        *free = env_u64("STUB_NVML_GPU1_FREE", 7430346834ULL);
    } else {
        *total = 81559ULL * MIB;
        *reserved = 471ULL * MIB;
        *free = 81559ULL * MIB - 471ULL * MIB - 4ULL * MIB;
    }
}

nvmlReturn_t nvmlInit_v2(void) {
    const char *fail = getenv("STUB_NVML_FAIL_INIT");
    return (fail && fail[0] == '1') ? NVML_ERROR_DRIVER_NOT_LOADED : NVML_SUCCESS;
}

nvmlReturn_t nvmlShutdown(void) { return NVML_SUCCESS; }

const char *nvmlErrorString(nvmlReturn_t r) { (void)r; return "stub error"; }

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    snprintf(version, length, "%s", "550.54.15");
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    *count = gpu_count();
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (index >= gpu_count()) return NVML_ERROR_INVALID_ARGUMENT;
    *device = (nvmlDevice_t)(unsigned long)(index + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *index) {
    int i = handle_index(d);
    if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned int)i;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length) {
    int i = handle_index(d);
    if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(uuid, length, "GPU-00000000-0000-0000-0000-%012d", i);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length) {
    int i = handle_index(d);
    if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    snprintf(name, length, "%s", is_desktop(i) ? "NVIDIA GeForce RTX 3070" : "NVIDIA H100 80GB HBM3");
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    unsigned long long total, reserved, free;
    int i = handle_index(d);
    if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    memory(i, &total, &reserved, &free);
    m->total = total;
    m->free = free;
    m->used = total - free; /* v1: used includes the reserved area */
    return NVML_SUCCESS;
}

#ifndef STUB_NO_OPTIONAL
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m) {
    unsigned long long total, reserved, free;
    int i = handle_index(d);
    if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    if ((m->version >> 24) != 2) return NVML_ERROR_INVALID_ARGUMENT;
    memory(i, &total, &reserved, &free);
    m->total = total;
    m->reserved = reserved;
    m->free = free;
    m->used = total - reserved - free;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t d, unsigned int *current, unsigned int *pending) {
    int i = handle_index(d);
    if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    if (is_desktop(i)) return NVML_ERROR_NOT_SUPPORTED;
    *current = 0;
    *pending = 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos) {
    unsigned long long total, reserved, free;
    int i = handle_index(d);
    if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    if (!is_desktop(i)) {
        *count = 0;
        return NVML_SUCCESS;
    }
    if (infos == NULL || *count < 1) {
        *count = 1;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    memory(i, &total, &reserved, &free);
    infos[0].pid = env_uint("STUB_NVML_PROC_PID", 4242);
    infos[0].usedGpuMemory = total - reserved - free;
    infos[0].gpuInstanceId = 0xFFFFFFFF;
    infos[0].computeInstanceId = 0xFFFFFFFF;
    *count = 1;
    return NVML_SUCCESS;
}
#endif

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t d, int *major, int *minor) {
    int i = handle_index(d);
    if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    *major = is_desktop(i) ? 8 : 9;
    *minor = is_desktop(i) ? 6 : 0;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *pci) {
    int i = handle_index(d);
    if (i < 0) return NVML_ERROR_INVALID_ARGUMENT;
    memset(pci, 0, sizeof(*pci));
    pci->bus = (unsigned int)(0x18 + i);
    pci->pciDeviceId = 0x233010de;
    snprintf(pci->busIdLegacy, sizeof(pci->busIdLegacy), "0000:%02X:00.0", pci->bus);
    snprintf(pci->busId, sizeof(pci->busId), "00000000:%02X:00.0", pci->bus);
    return NVML_SUCCESS;
}
