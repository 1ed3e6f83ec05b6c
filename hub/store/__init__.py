"""What the hub keeps on disk: blobs (DICOM instances, source messages); later the ledger and registry."""
