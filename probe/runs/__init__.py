"""Run folders: model selection (``selection``), the folder's files, summary and swap
(``folder``), and the journal that makes a fit resumable (``resume``)."""
