from trailingstop.cli import main

raise SystemExit(main())
