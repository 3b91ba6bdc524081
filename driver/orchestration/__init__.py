"""The Ray orchestration of a run: the session and its actors (``ray_session``), one resumable attribution
unit (``attribution_unit``: shard, generate, attribute, merge exactly once), who samples (``samplers``), the
work order (``dispatch``, no Ray), workers' errors (``ray_errors``), progress, the unit's records
(``unit_records``), the rollout backend's choice (``rollout_choice``), and where the experiment's model
lives (``model_access``). ``pipeline`` is the entry point: ``attribute_on_ray`` and ``RaySession``."""
