/*
 * A UEFI application that leaves boot services and then calls AllocatePool through the system table, whose
 * BootServices pointer ExitBootServices cleared: the call jumps through a NULL table, as a careless loader's
 * would.
 */
#include "efi.h"

EFI_STATUS efi_main(EFI_HANDLE image, SYSTEM_TABLE *system_table) {
  void *pool = 0;
  UINTN key;

  gST = system_table;
  key = get_map();
  if (BS(gST, BS_EXIT_BOOT_SERVICES, EXIT_BOOT_SERVICES)(image, key) != EFI_SUCCESS)
    return EFI_ERROR_BIT | 0x55;
  return BS(gST, BS_ALLOCATE_POOL, ALLOCATE_POOL)(EFI_LOADER_DATA, 16, &pool);
}
