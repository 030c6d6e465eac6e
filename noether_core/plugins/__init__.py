"""The plugin machinery: the hook specs and markers, finding and checking plugins (``registry``),
calling them (``manager``), when they are due (``scheduling``) and where their time went (``timing``).
Plugin authors import from the top-level ``noether_core`` package, not from here."""
