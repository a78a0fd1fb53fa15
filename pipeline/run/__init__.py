"""The Ray run: one extraction from a manifest to committed parts.

`runner` tells the story of a run (claim the output, stream, commit, finish); `feed` builds the Ray Data
pipeline (videos → decode tasks → inference actor pool); `decode_stage` is the CPU stage (a video's
clips, or a failure row); `infer` the GPU stage (`ClipEmbedder`, with `upload` for host-to-device copies);
`results` the shape of a result row; `collector` gathers a video's clip rows until it is complete, and
`aggregate` averages them into the video row; `ray_reaper` ends an embedded Ray when its driver dies.

May import: everything below it (`decode`, `model`, `store`, config, corpus, errors), and Ray.
Never the console: progress leaves a run through a listener (`runner.RunListener`) that the CLI supplies.
"""
