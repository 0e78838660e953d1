"""Models: loading them with one-line errors (:mod:`.loading`), reading where their parts live and
how they are called (:mod:`.anatomy`), students built from a teacher (:mod:`.student`) and pruned
in width by measured activation importance (:mod:`.width`), student→teacher
layer maps (:mod:`.layer_maps`), checks that models, inputs and memory fit before a run
(:mod:`.preflight`), and timing models side by side (:mod:`.speed`). None of it knows a task."""
