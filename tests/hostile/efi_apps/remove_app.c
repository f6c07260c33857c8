/*
 * A UEFI application that owns one accepted page and gives the host a chance to take it away: it allocates a
 * page, writes a marker, calls Stall (where the test, acting as the VMM, removes the page and maybe AUGs it
 * again), then uses the page again.
 *   default:          touches the page; with the page removed that is a TD termination.
 *   -DGUEST_REACCEPT: first accepts the page itself with TDCALL, as a guest that keeps no record of what it
 *                     accepted would; a page the VMM removed and AUGed again comes back zeroed.
 *   -DFIRMWARE_ACCEPT: first asks the firmware's option-3 AcceptMemory for the page; the firmware's record
 *                     says it is accepted already, so nothing is accepted again.
 */
#include "efi.h"

#define MARKER 0x5AFEC0DEULL

EFI_STATUS efi_main(EFI_HANDLE image, SYSTEM_TABLE *system_table) {
  UINT64 page = 0;
  volatile UINT64 *p;

  gST = system_table;
  if (BS(gST, BS_ALLOCATE_PAGES, ALLOCATE_PAGES)(ALLOCATE_ANY_PAGES, EFI_LOADER_DATA, 1, &page) != EFI_SUCCESS)
    return EFI_ERROR_BIT | 9;
  p = (volatile UINT64 *)page;
  *p = MARKER;
  report("page", page);
  BS(gST, BS_STALL, STALL)(1);
#ifdef GUEST_REACCEPT
  report("tdcall_accept", tdcall_accept_4k(page));
#endif
#ifdef FIRMWARE_ACCEPT
  report("accept_memory", BS(gST, BS_ACCEPT_MEMORY, ACCEPT_MEMORY)(page, 4096));
#endif
  report("marker", *p);
  return EFI_SUCCESS;
}
