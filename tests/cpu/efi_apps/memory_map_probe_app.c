/*
 * A loader that sizes its memory map buffer exactly from GetMemoryMap's size probe, as edk2 commit f80a406aa9
 * ("MdeModulePkg: CoreGetMemoryMap: Account for Unaccepted Entries", first in edk2-stable202511) describes: before
 * it, CoreGetMemoryMap (MdeModulePkg/Core/Dxe/Mem/Page.c) counted GCD reserved, persistent and runtime MMIO
 * entries for the needed size but not GCD unaccepted ones, which it then writes as EfiUnacceptedMemoryType
 * descriptors all the same: past the end of a buffer of the probed size.
 *
 * The buffer is static (the probe and the call see the same map: nothing is allocated between them) and followed
 * by a guard area filled with a canary, so an overflow is seen rather than corrupting the firmware's pool.
 * Printed (ConOut, "name=0x..." lines as tests/hostile/conftest.py cases() parses): the probe's status and size,
 * the second call's status and returned size, the bytes written past the probed size, the unaccepted descriptors.
 * Exit status: EFI_SUCCESS when the map fit in the probed size, EFI_BAD_BUFFER_SIZE when the call wrote past it
 * (the overflow), otherwise the status of the failing call (e.g. EFI_BUFFER_TOO_SMALL from the second call;
 * EFI_INVALID_PARAMETER when the probe did not answer EFI_BUFFER_TOO_SMALL; EFI_OUT_OF_RESOURCES when the probed
 * size leaves no room for the guard area).
 *
 * With -DSTRIPES=N the app first marks N 2 MiB stripes of the first unaccepted range EFI_MEMORY_RUNTIME through
 * the DXE services' SetMemorySpaceAttributes (a GCD attribute change only: RUNTIME needs no page table change,
 * Gcd.c CoreConvertSpace), which splits the one GCD unaccepted entry into 2N or 2N + 1 that GetMemoryMap cannot
 * merge. The probe over-counts by the descriptors it merges (2 on Debian's OVMF 2025.02, 8 GiB), which hides a
 * single unaccepted descriptor; more than that many and the pre-f80a406aa9 probe falls short.
 *
 * Built with Debian's mingw-w64 (tests/cpu/efi_apps/build.py, which also gives it a Linux setup header so that
 * QEMU's -kernel and OVMF's direct boot take it).
 */
#include "../../hostile/efi_apps/efi.h"

#define EFI_BAD_BUFFER_SIZE (EFI_ERROR_BIT | 4)
#define EFI_BUFFER_TOO_SMALL (EFI_ERROR_BIT | 5)
#define EFI_OUT_OF_RESOURCES (EFI_ERROR_BIT | 9)
#define CANARY 0xA5
#define BUFFER_BYTES (128 * 1024)

#define EFI_MEMORY_RUNTIME (1ULL << 63)
#define STRIPE (2ULL << 20)
#ifndef STRIPES
#define STRIPES 0
#endif

static unsigned char buffer[BUFFER_BYTES];

typedef struct {
  UINT8 Guid[16];
  void *Table;
} CONFIGURATION_TABLE;

/* EFI_DXE_SERVICES (PI 1.8 vol. 2): the header, then AddMemorySpace .. SetMemorySpaceAttributes (index 5). */
typedef struct {
  EFI_TABLE_HEADER Hdr;
  void *Fn[6];
} DXE_SERVICES;
typedef EFI_STATUS (*SET_MEMORY_SPACE_ATTRIBUTES)(UINT64, UINT64, UINT64);

/* 05ad34ba-6f02-4214-952e-4da0398e2bb9, as it lies in memory */
static const UINT8 dxe_services_guid[16] = {0xba, 0x34, 0xad, 0x05, 0x02, 0x6f, 0x14, 0x42,
                                            0x95, 0x2e, 0x4d, 0xa0, 0x39, 0x8e, 0x2b, 0xb9};

/* Mark STRIPES 2 MiB stripes of the first unaccepted range RUNTIME; the count of calls that succeeded. */
static UINTN split_unaccepted(GET_MEMORY_MAP get_memory_map, UINTN entries, CONFIGURATION_TABLE *tables) {
  UINTN size = BUFFER_BYTES, key, dsize, i, k, done = 0;
  UINT32 version;
  UINT64 start = 0, pages = 0;
  DXE_SERVICES *ds = 0;

  for (i = 0; i < entries && !ds; i++) {
    for (k = 0; k < 16 && tables[i].Guid[k] == dxe_services_guid[k]; k++)
      ;
    if (k == 16)
      ds = (DXE_SERVICES *)tables[i].Table;
  }
  if (!ds || get_memory_map(&size, buffer, &key, &dsize, &version) != EFI_SUCCESS)
    return 0;
  for (i = 0; i + dsize <= size && !start; i += dsize) {
    EFI_MEMORY_DESCRIPTOR *d = (EFI_MEMORY_DESCRIPTOR *)(buffer + i);
    if (d->Type == EFI_UNACCEPTED_MEMORY_TYPE)
      start = d->PhysicalStart, pages = d->NumberOfPages;
  }
  for (k = 0; k < STRIPES && (2 * k + 2) * STRIPE <= pages << 12; k++)
    done += ((SET_MEMORY_SPACE_ATTRIBUTES)ds->Fn[5])(start + (2 * k + 1) * STRIPE, STRIPE, EFI_MEMORY_RUNTIME) ==
            EFI_SUCCESS;
  return done;
}

EFI_STATUS efi_main(EFI_HANDLE image, SYSTEM_TABLE *system_table) {
  GET_MEMORY_MAP get_memory_map;
  UINTN probe = 0, size, key = 0, dsize = 0, i, past = 0, unaccepted = 0;
  UINT32 version = 0;
  EFI_STATUS probe_status, status;

  (void)image;
  gST = system_table;
  get_memory_map = BS(gST, BS_GET_MEMORY_MAP, GET_MEMORY_MAP);
  print("\r\nmemory-map-probe app: GetMemoryMap into the probed size\r\n");  /* own line after the firmware's */
  if (STRIPES) {
    /* NumberOfTableEntries and ConfigurationTable follow BootServices in EFI_SYSTEM_TABLE */
    void **tail = (void **)&system_table->BootServices + 1;
    report("stripes_marked", split_unaccepted(get_memory_map, (UINTN)tail[0], (CONFIGURATION_TABLE *)tail[1]));
  }
  for (i = 0; i < BUFFER_BYTES; i++)
    buffer[i] = CANARY;
  probe_status = get_memory_map(&probe, buffer, &key, &dsize, &version);
  size = probe;
  status = probe_status;
  if (probe_status != EFI_BUFFER_TOO_SMALL)
    status = probe_status == EFI_SUCCESS ? EFI_INVALID_PARAMETER : probe_status;  /* a size-0 map cannot fit */
  else if (probe == 0 || probe > BUFFER_BYTES / 2)
    status = EFI_OUT_OF_RESOURCES;  /* no room for the guard area: say so rather than overflow ourselves */
  else
    status = get_memory_map(&size, buffer, &key, &dsize, &version);
  /* The furthest byte the call wrote, from the canary left behind it (descriptors hold zero padding). */
  for (i = BUFFER_BYTES; i > probe; i--)
    if (buffer[i - 1] != CANARY) {
      past = i - probe;
      break;
    }
  if (status == EFI_SUCCESS && dsize)
    for (i = 0; i + dsize <= size; i += dsize)
      unaccepted += ((EFI_MEMORY_DESCRIPTOR *)(buffer + i))->Type == EFI_UNACCEPTED_MEMORY_TYPE;
  report("probe_status", probe_status);
  report("probe_size", probe);
  report("descriptor_size", dsize);
  report("map_status", status);
  report("map_size", size);
  report("written_past_probe", past);
  report("unaccepted_descriptors", unaccepted);
  if (status != EFI_SUCCESS)
    return status;
  if (past || size > probe) {
    print("memory-map-probe app: OVERFLOW: the map did not fit in the size the probe asked for\r\n");
    return EFI_BAD_BUFFER_SIZE;
  }
  print("memory-map-probe app: the map fit in the probed size\r\n");
  return EFI_SUCCESS;
}
