set SESSIONSTORE_ENCRYPTION_KEY to the master key (base64 of 32 bytes) that the application opens its store with: encrypt seals messages with its users' data keys
