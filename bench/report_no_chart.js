// Stands in for Chart.js when the build found no libjs-chart.js: derpbench report refuses to
// write HTML with it (report_cli.cc checks the size), so no page ever carries this.
