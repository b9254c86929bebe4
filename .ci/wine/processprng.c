/* Test-rig shim for Wine 8 only; never shipped.
 * Wine 8.0 lacks bcryptprimitives.dll, which Rust's std imports for ProcessPrng, so
 * every Rust .exe fails to load (c0000135). This DLL provides ProcessPrng through
 * advapi32's SystemFunction036 (RtlGenRandom). See shared/windows-lane.md. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x7fffffff ? 0x7fffffff : (ULONG)length;
        if (!SystemFunction036(data, chunk)) return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
