/*
 * A UEFI application that writes to memory it does not own:
 *   default:        the first unaccepted (type 15) range of the memory map, from its own code;
 *   -DPCI_HOLE:     0xE0000000, where the VMM has no RAM;
 *   -DVIA_FIRMWARE: hands the firmware an unaccepted buffer to write the memory map into;
 *   -DSET_MEM_HUGE: SetMem over 2^62 bytes from an accepted page, running into memory that is not accepted.
 * Each ends the run: the TD is terminated, as on TDX hardware.
 */
#include "efi.h"

EFI_STATUS efi_main(EFI_HANDLE image, SYSTEM_TABLE *system_table) {
  UINT64 target;
  UINTN size = sizeof(map_buffer), key, dsize;
  UINT32 version;

  gST = system_table;
  get_map();
  target = first_of_type(EFI_UNACCEPTED_MEMORY_TYPE);
#ifdef PCI_HOLE
  target = 0xE0000000ULL;
#endif
  report("target", target);
#if defined(VIA_FIRMWARE)
  BS(gST, BS_GET_MEMORY_MAP, GET_MEMORY_MAP)(&size, (void *)target, &key, &dsize, &version);
#elif defined(SET_MEM_HUGE)
  target = 0;
  BS(gST, BS_ALLOCATE_PAGES, ALLOCATE_PAGES)(ALLOCATE_ANY_PAGES, EFI_LOADER_DATA, 1, &target);
  BS(gST, BS_SET_MEM, SET_MEM)((void *)target, 1ULL << 62, 0x5A);
#else
  *(volatile UINT64 *)target = 1;
#endif
  print("wild-write app: still running\r\n");
  return EFI_SUCCESS;
}
