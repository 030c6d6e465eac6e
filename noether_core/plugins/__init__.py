"""The plugin machinery: the hook specs and markers, finding and checking plugins (``registry``), the
run's entries (``manager``) and how an event reaches them (``dispatch``), when they are due
(``scheduling``), where their time went (``timing``), and a new plugin package (``scaffold``).
Plugin authors import from the top-level ``noether_core`` package, not from here."""
