"""gzfast: DALI loaders, curriculum and an Accelerate bf16 ConvNeXt trainer for GZ2 shards."""
