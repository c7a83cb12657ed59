"""What the CMA paper's theory says about a fit: the transfer bound's terms on each head
(``bounds``) and whether evaluation data lie near the hull of the training domains
(``hull``)."""
