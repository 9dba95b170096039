"""The engine core: block manager, scheduler, model runner, the sync and async engines."""
